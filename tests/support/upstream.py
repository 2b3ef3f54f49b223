"""Two process groups as `make run` starts them: an upstream OpenID Provider (our own OP,
on `https://127.0.0.1:<port>`) and the OP under test (`https://localhost:<port>`), whose
registry names the upstream in its `authorities:` list. Different host names, so the two
OPs' cookies (same names, same paths) stay apart as they do for real sites; the
downstream trusts the upstream's Caddy CA through `SSL_CERT_FILE` (OpenSSL's default
verify paths, which the authorities' fetches use)."""

from __future__ import annotations

import html
import json
import re
import secrets
from pathlib import Path
from contextlib import contextmanager
from typing import Optional
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
import yaml

from shared import jose, keytool
from shared.keys import load_keyring
from shared.users.passwords import hash_password

from .agent import authorize_again
from .group import Group, free_port

CALLBACK = "/signin/v1/identifier/oauth2/cb"


def write_state(group: Group, *, clients: list, users: dict, authorities: Optional[list] = None) -> dict:
    """The group's dev state before its first start: the demo client and user (which
    `make run` would write) plus `clients`, `users` (name -> password) and `authorities`."""
    state = group.state
    state.mkdir(parents=True, exist_ok=True)
    demo = {"client_id": "konnect-demo", "client_secret": secrets.token_urlsafe(24),
            "username": "demo", "password": secrets.token_urlsafe(9)}
    (state / "demo.json").write_text(json.dumps(demo))
    host = urlsplit(group.issuer).hostname
    origin = f"https://{host}:{group.env['KONNECT_DEMO_PORT']}"
    doc = {"clients": [{"id": demo["client_id"], "name": "Konnect demo app",
                        "secret": demo["client_secret"], "trusted": True,  # no consent page
                        "redirect_uris": [origin + "/callback"],
                        "post_logout_redirect_uris": [origin + "/"]}, *clients]}
    if authorities:
        doc["authorities"] = authorities
    (state / "identifier-registration.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    everyone = {"demo": demo["password"], **users}
    entries = [{"username": name, "password": hash_password(password), "name": name.title(),
                "email": f"{name}@example.test", "id": 1000 + i, "uuid": secrets.token_hex(16)}
               for i, (name, password) in enumerate(everyone.items())]
    (state / "users.yaml").write_text(yaml.safe_dump({"users": entries}))
    return demo


class IPGroup(Group):
    """A group whose issuer (and so its demo app) is on 127.0.0.1."""

    @property
    def demo_url(self) -> str:
        return f"https://127.0.0.1:{self.env['KONNECT_DEMO_PORT']}"


def ports_of(group: Group) -> set:
    """Every port a group will listen on (free when it was made, but not yet taken)."""
    found = {urlsplit(group.issuer).port}
    for name, value in group.env.items():
        if name.startswith("KONNECT_") and (name.endswith(("_LISTEN", "_PORT"))):
            found.add(int(value.rpartition(":")[2]))
    return found


def apart(make, *others: Group, tries: int = 20):
    """`make()` again until its group shares no port with `others` (free_port hands out
    what is free now; groups made before any starts could be handed the same one)."""
    taken = set().union(*(ports_of(g) for g in others)) if others else set()
    for _ in range(tries):
        group = make()
        if not ports_of(group) & taken and len(ports_of(group)) == len(
                [1 for n in group.env if n.startswith("KONNECT_") and n.endswith(("_LISTEN", "_PORT"))]) + 1:
            return group
    raise RuntimeError("no distinct free ports")


def upstream_group(state: Path) -> Group:
    group = IPGroup(state)
    port = urlsplit(group.issuer).port
    group.issuer = f"https://127.0.0.1:{port}"
    group.env["OIDC_ISSUER_IDENTIFIER"] = group.issuer
    return group


def downstream_group(state: Path, upstream: Group) -> Group:
    return Group(state, extra_env={"SSL_CERT_FILE": upstream.ca})


def upstream_client(client_id: str, downstream: Group, *, secret: Optional[str] = None) -> dict:
    """The registration of the OP under test at the upstream OP (docs/operations.md)."""
    entry = {"id": client_id, "name": f"{client_id} (downstream)",
             "redirect_uris": [downstream.issuer + CALLBACK],
             "post_logout_redirect_uris": [downstream.issuer + CALLBACK]}
    if secret:
        entry["secret"] = secret
    return entry


def authorize_url(group, **extra):
    """The demo RP's authorization request at `group` (code flow), and its origin."""
    demo = group.demo
    origin = f"https://localhost:{group.env['KONNECT_DEMO_PORT']}"
    query = {"client_id": demo["client_id"], "redirect_uri": origin + "/callback",
             "response_type": "code", "scope": "openid profile", "state": "rp-state",
             "nonce": "rp-nonce", **extra}
    return group.issuer + "/signin/v1/identifier/_/authorize?" + urlencode(query), origin


def redeem_tokens(group, code, origin) -> dict:
    """The token response for the demo RP's `code`."""
    demo = group.demo
    resp = requests.post(group.issuer + "/konnect/v1/token", verify=group.ca, timeout=15,
                         data={"grant_type": "authorization_code", "code": code,
                               "redirect_uri": origin + "/callback"},
                         auth=(demo["client_id"], demo["client_secret"]))
    assert resp.status_code == 200, resp.text
    return resp.json()


def redeem(group, code, origin):
    """The ID token claims for the demo RP's `code`."""
    return jose.unverified_claims(redeem_tokens(group, code, origin)["id_token"])


def end_session_url(group, id_token: str, origin: str) -> str:
    """The demo RP's RP-initiated logout at `group` (back to its origin, state `bye`)."""
    return group.issuer + "/signin/v1/identifier/_/endsession?" + urlencode(
        {"id_token_hint": id_token, "post_logout_redirect_uri": origin + "/", "state": "bye"})


def query_of(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


_FORM = re.compile(r'<form[^>]*method=["\']?post["\']?[^>]*action="([^"]+)"', re.I)
_REFRESH = re.compile(r'<meta http-equiv=refresh content="0;url=([^"]+)"', re.I)
_INPUT = re.compile(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.I)


class Browser:
    """A person's browser across both OPs, done with `requests`: follows redirects, posts
    `form_post` pages, and signs in on the upstream's sign-in page with `credentials`
    (what its script does: the JSON API, then the authorization request again)."""

    def __init__(self, *cas: str) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        bundle = Path(cas[0]).with_name("browser-ca-bundle.pem")
        bundle.write_text("".join(Path(ca).read_text() for ca in cas))
        self.session.verify = str(bundle)
        self.steps: list = []

    def run(self, url: str, *, upstream: Optional[Group] = None, credentials=("", ""),
            stop_at: str = "", max_steps: int = 25) -> requests.Response:
        """Go to `url`; stop at the first URL starting with `stop_at` (not fetched: the
        response is None then, and `self.steps[-1]` is that URL) or at a page."""
        method, data = "GET", None
        for _ in range(max_steps):
            self.steps.append(url)
            if stop_at and url.startswith(stop_at):
                return None
            parts = urlsplit(url)
            if upstream is not None and url.startswith(upstream.issuer) \
                    and parts.path == "/signin/v1/identifier":
                resp = self.session.post(
                    upstream.issuer + "/signin/v1/identifier/_/logon", timeout=15,
                    json={"state": "s", "params": [credentials[0], credentials[1], "1"]},
                    headers={"Kopano-Konnect-XSRF": "1", "Origin": upstream.issuer})
                if resp.status_code != 200:
                    return resp
                url = authorize_again(upstream.issuer, url)
                continue
            resp = self.session.request(method, url, data=data, allow_redirects=False,
                                        timeout=15)
            method, data = "GET", None
            if resp.status_code in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.headers["Location"])
                continue
            refresh = _REFRESH.search(resp.text) if resp.status_code == 200 else None
            if refresh:  # a trampoline page (services/identifier/authorities.py)
                url = urljoin(url, html.unescape(refresh.group(1)))
                continue
            form = _FORM.search(resp.text) if resp.status_code == 200 else None
            if form and "document.forms[0].submit()" in resp.text:  # form_post (auto-submit)
                url = html.unescape(form.group(1))
                method = "POST"
                data = {html.unescape(k): html.unescape(v) for k, v in _INPUT.findall(resp.text)}
                continue
            return resp
        raise AssertionError(f"too many steps: {self.steps}")

    def cookie(self, name: str) -> Optional[str]:
        return next((c.value for c in self.session.cookies if c.name == name), None)


def logged(group: Group, text: str, timeout: float = 10.0) -> bool:
    """Whether `text` reaches the group's log (supervisord copies it over with a delay)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in group.output():
            return True
        time.sleep(0.1)
    return False


SECRET = secrets.token_urlsafe(24)


def authority(id_: str, up: Group, client_id: str, **extra) -> dict:
    return {"id": id_, "name": f"Upstream {id_}", "authority_type": "oidc", "iss": up.issuer,
            "client_id": client_id, "client_secret": SECRET, **extra}


def start_all(*groups: Group) -> None:
    """Start `groups` in order; on a failure stop those started and raise with the lines of
    the failing group's log that name a problem (the group's own error shows only the
    beginning and end of its log)."""
    started = []
    try:
        for group in groups:
            group.start()
            started.append(group)
    except RuntimeError as err:
        for group in reversed(started):
            group.stop()
        failing = groups[len(started)]
        lines = [line for line in failing.output().splitlines()
                 if re.search(r"level=(error|critical)|Traceback|Error|exited", line)]
        raise RuntimeError(f"{err}\n-- problems in its log:\n" + "\n".join(lines[-40:])) from None


@contextmanager
def oidc_sites(base: Path, tries: int = 2):
    """The upstream OP (`up`, users demo and ext-bob), the OP under test with non-default
    authorities (`down`: code, implicit, other, alias, wrong-iss, explicit (no discovery),
    dead; local users demo
    and bob) and an SSO-only OP under test (`sso`: its `default` authority `only`).
    Started again on fresh ports once if a group cannot start (another process on this
    machine may take a port `free_port` handed out)."""
    for attempt in range(tries):
        try:
            groups = _oidc_sites(base / f"try{attempt}")
            break
        except RuntimeError:
            if attempt == tries - 1:
                raise
    try:
        yield groups
    finally:
        for group in (groups["sso"], groups["down"], groups["up"]):
            group.stop()


def _oidc_sites(base: Path) -> dict:
    up = apart(lambda: upstream_group(base / "up"))
    down = apart(lambda: downstream_group(base / "down", up), up)
    sso = apart(lambda: downstream_group(base / "sso", up), up, down)
    dead = f"https://127.0.0.1:{free_port()}"
    up_users = {"ext-bob": "bob-upstream-pw"}
    # the upstream's key made now (as `make run` would at its first start), so that an
    # entry can name its keys without discovery, as Konnect's example does
    keytool.generate(up.state / "keys", "rsa", bits=2048)
    jwks = load_keyring([str(up.state / "keys" / keytool.LINK_NAME)]).jwks()
    write_state(up, users=up_users, clients=[
        {**upstream_client("down-code", down, secret=SECRET), "trusted": True},
        {**upstream_client("down-implicit", down, secret=SECRET), "trusted": True},
        {**upstream_client("down-other", down, secret=SECRET), "trusted": True},
        {**upstream_client("sso", sso, secret=SECRET), "trusted": True}])
    write_state(down, users={"bob": "bob-local-pw"}, clients=[], authorities=[
        authority("code", up, "down-code", response_type="code", end_session_enabled=True),
        authority("implicit", up, "down-implicit"),
        authority("other", up, "down-other"),
        authority("alias", up, "down-code", response_type="code", identity_alias_required=True,
                  identity_aliases={"ext-bob": "bob"}),
        authority("wrong-iss", up, "down-code", iss=up.issuer + "/"),
        authority("explicit", up, "down-implicit", discover=False, jwks=jwks,
                  authorization_endpoint=up.issuer + "/signin/v1/identifier/_/authorize"),
        {**authority("dead", up, "down-code"), "iss": dead}])
    write_state(sso, users={}, clients=[], authorities=[
        authority("only", up, "sso", response_type="code", default=True)])
    start_all(up, down, sso)
    return {"up": up, "down": down, "sso": sso}


