// OpenID Connect Session Management 1.0 §3.2: the OP iframe (as Konnect's oidc/provider/html.go).
// The RP posts "<client_id> <session_state>"; the answer is "unchanged", "changed" or
// "error". session_state = hex(SHA-256(client_id + " " + origin + " " + browser_state +
// " " + salt)) + "." + salt, with browser_state read from the KKBS cookie ("" if absent).
(function () {
  "use strict";
  var cookieName = document.getElementById("kkbs-name").textContent;
  var lastChanged = null;

  function browserState() {
    var parts = document.cookie ? document.cookie.split(";") : [];
    for (var i = 0; i < parts.length; i++) {
      var item = parts[i].replace(/^\s+/, "");
      if (item.indexOf(cookieName + "=") === 0) {
        return decodeURIComponent(item.slice(cookieName.length + 1));
      }
    }
    return "";
  }

  function hex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function check(message, origin) {
    if (typeof message !== "string" || message.length > 4096) { return Promise.resolve("error"); }
    var parts = message.split(" ");
    var dot = parts.length === 2 ? parts[1].lastIndexOf(".") : -1;
    if (!parts[0] || dot < 1 || dot === parts[1].length - 1) { return Promise.resolve("error"); }
    var hash = parts[1].slice(0, dot), salt = parts[1].slice(dot + 1), state = browserState();
    var data = new TextEncoder().encode(parts[0] + " " + origin + " " + state + " " + salt);
    return crypto.subtle.digest("SHA-256", data).then(function (digest) {
      if (hex(digest) === hash) { lastChanged = null; return "unchanged"; }
      // The same change reported twice in a row means the RP is looping: say "error".
      if (lastChanged === state) { return "error"; }
      lastChanged = state;
      return "changed";
    }, function () { return "error"; });
  }

  // Session Management 1.0 §3.2, §3.3: the RP posts from its own page or from the RP
  // iframe beside this one (a sibling: same parent); nobody else gets an answer.
  function fromOurPage(source) {
    if (!source || source === window) { return false; }
    if (source === window.parent) { return true; }
    try { return source.parent === window.parent; } catch (e) { return false; }
  }

  window.addEventListener("message", function (event) {
    if (!fromOurPage(event.source)) { return; }
    check(event.data, event.origin).then(function (answer) {
      event.source.postMessage(answer, event.origin);
    });
  }, false);
})();
