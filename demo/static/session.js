// OpenID Connect Session Management 1.0 §4: the RP side. Embeds the OP's check-session
// iframe and asks every 2 s whether the session at the OP is still the one we signed in to.
(function () {
  "use strict";
  var status = document.getElementById("session-status");
  if (!status || !status.dataset.iframe || !status.dataset.state) { return; }
  var opOrigin = new URL(status.dataset.iframe).origin;
  var frame = document.createElement("iframe");
  frame.src = status.dataset.iframe;
  frame.title = "session check";
  frame.hidden = true;
  document.body.appendChild(frame);
  window.addEventListener("message", function (event) {
    if (event.origin !== opOrigin || event.source !== frame.contentWindow) { return; }
    status.textContent = event.data;
  });
  function ask() {
    frame.contentWindow.postMessage(status.dataset.client + " " + status.dataset.state, opOrigin);
  }
  frame.addEventListener("load", function () { ask(); window.setInterval(ask, 2000); });
})();
