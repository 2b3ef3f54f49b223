// First-party script of the sign-in pages: calls the identifier JSON API (docs/identifier-api.yaml).
(function () {
  "use strict";
  var messages = JSON.parse(document.getElementById("messages").textContent);
  var query = new URLSearchParams(window.location.search);
  var base = "/signin/v1/identifier/_/";
  function randomState() {
    var a = new Uint8Array(16); window.crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function showError(text) {
    var el = document.getElementById("error"); el.textContent = text; el.hidden = false;
    document.getElementById("heading").focus();
  }
  function api(name, body) {
    body.state = body.state || randomState();
    return fetch(base + name, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Kopano-Konnect-XSRF": "1" },
      body: JSON.stringify(body) }).then(function (r) {
        if (r.status === 204) { return null; }
        if (r.status === 429) { throw new Error(messages.too_many); }
        if (!r.ok) { throw new Error(messages.failed); }
        return r.json();
      });
  }
  function hello() {
    var h = {}; query.forEach(function (v, k) { h[k] = v; }); h.flow = query.get("flow") || ""; return h;
  }
  function authorizeQuery(extra) {
    var q = new URLSearchParams(window.location.search); q.delete("flow");
    var prompt = (q.get("prompt") || "").split(" ").filter(function (p) { return p && p !== "login" && p !== "select_account"; });
    if (prompt.length) { q.set("prompt", prompt.join(" ")); } else { q.delete("prompt"); }
    Object.keys(extra || {}).forEach(function (k) { q.set(k, extra[k]); });
    return "/signin/v1/identifier/_/authorize?" + q.toString();
  }
  var form = document.getElementById("logon");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var user = form.username.value.trim(), pass = form.password.value;
      if (!user || !pass) { showError(messages.missing); return; }
      api("logon", { params: [user, pass, "1"], hello: hello() }).then(function (res) {
        if (!res) { showError(messages.wrong); form.password.value = ""; return; }
        if (query.get("flow") === "oidc") { window.location.assign(authorizeQuery()); }
        else { window.location.assign("/signin/v1/welcome"); }
      }).catch(function (e) { showError(e.message); });
    });
  }
  function consent(allow) {
    var state = randomState();
    api("consent", { state: state, allow: allow, scope: query.get("scope") || "",
      client_id: query.get("client_id") || "", redirect_uri: query.get("redirect_uri") || "",
      ref: query.get("state") || "", flow_nonce: query.get("nonce") || "" }).then(function () {
        window.location.assign(authorizeQuery({ konnect: state, prompt: "none" }));
      }).catch(function (e) { showError(e.message); });
  }
  var allow = document.getElementById("allow"), deny = document.getElementById("deny");
  if (allow) { allow.addEventListener("click", function () { consent(true); }); }
  if (deny) { deny.addEventListener("click", function () { consent(false); }); }
  var chooser = document.getElementById("continue");
  if (chooser) {
    // Choose account: the signed-in account, or another one (the sign-in form).
    api("hello", hello()).then(function (res) {
      if (!res) { window.location.replace(document.getElementById("another").href); return; }
      document.getElementById("account-name").textContent = res.displayName || res.username;
      chooser.addEventListener("click", function () {
        // logon mode "0": go on as the signed-in user, without the password (Konnect's)
        api("logon", { params: [res.username, "", "0"], hello: hello() }).then(function (again) {
          if (!again) { window.location.assign(document.getElementById("another").href); return; }
          window.location.assign(authorizeQuery());
        }).catch(function (e) { showError(e.message); });
      });
    }).catch(function (e) { showError(e.message); });
  }
  var logoff = document.getElementById("logoff");
  if (logoff) {
    logoff.addEventListener("click", function () {
      api("logoff", {}).then(function () { window.location.assign("/signin/v1/goodbye?done=1"); })
        .catch(function (e) { showError(e.message); });
    });
  }
})();
