// OpenID Connect Session Management 1.0 §3.2: the OP iframe (as Konnect's oidc/provider/html.go).
// The RP posts "<client_id> <session_state>"; the answer is "unchanged", "changed" or
// "error". session_state = hex(SHA-256(client_id + " " + origin + " " + browser_state +
// " " + salt)) + "." + salt, with browser_state read from the KKBS cookie ("" if absent;
// sent more than once, it cannot be told which is the OP's: "error", never picked by order).
(function () {
  "use strict";
  var cookieName = document.getElementById("kkbs-name").textContent;
  var lastChanged = null;

  function browserState() {
    var parts = document.cookie ? document.cookie.split(";") : [];
    var found = [];
    for (var i = 0; i < parts.length; i++) {
      var item = parts[i].replace(/^\s+/, "");
      var eq = item.indexOf("=");
      if (eq > 0 && item.slice(0, eq).replace(/\s+$/, "") === cookieName) {
        found.push(item.slice(eq + 1).replace(/^\s+|\s+$/g, ""));
      }
    }
    if (found.length > 1) { return null; }
    return found.length ? found[0] : "";
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
    if (state === null) { return Promise.resolve("error"); }
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
