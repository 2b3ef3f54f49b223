"""A stand-in for the Kopano server's SOAP interface, for the `kc` backend tests.

No real Kopano server can be installed on this machine, so this small Tornado app answers
the operations the backend calls (logon, ssoLogon, logoff, resolveUsername, getUser) the
way the documented wire format describes them: gSOAP-style envelopes with
`SOAP-ENV:encodingStyle` on the Body, unqualified fields in declaration order plus fields
the backend does not read, Kopano error codes in `er`, and SOAP faults for malformed or
unknown calls. It runs on its own event loop in a thread, on a bound TCP port and
optionally on a unix socket, with an in-memory user table the test hands in.

Sessions are modelled as the Kopano server keeps them: `logon` registers one (unless
NO_REGISTER_SESSION), every call on a session refreshes it, and a session idle for longer
than `session_timeout` (server.cfg `session_timeout`, 300 s by default) is gone: calls on it
answer KCERR_END_OF_SESSION. `advance(seconds)` moves the stand-in's clock.

`ssoLogon` follows kopano-core's KCOIDC single sign-on (ECAuthSession::ValidateSSOData and
ValidateSSOData_KCOIDC, with libkcoidc's token checks): only with `enable_sso`, the input
must start with "KCOIDC", the rest is a JWT checked against the OP's published keys and
algorithms (`trust_issuer`, what libkcoidc reads from discovery and the JWKS): alg among
`id_token_signing_alg_values_supported`, known kid, signature, `exp`/`nbf`/`iat` without
leeway, `kc.isAccessToken`, the `kopano/gc` scope; the user is `kc.identity`'s `kc.i.id`
(else `sub`), a base64 address-book entry ID that must match `szUsername` when one is
given, and is looked up by its ExID; `clientVersion` must be present. Anything else is
KCERR_LOGON_FAILED, as the server answers. The signature is verified here with
`cryptography` directly, independently of the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.testing
import tornado.web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"SOAP-ENV": SOAP_ENV, "SOAP-ENC": SOAP_ENC, "xsi": XSI,
         "xsd": "http://www.w3.org/2001/XMLSchema", "ns": "urn:zarafa"}

KCERR_NOT_FOUND = 0x80000002
KCERR_LOGON_FAILED = 0x80000009
KCERR_END_OF_SESSION = 0x80000010
KCERR_INVALID_ENTRYID = 0x80000016
NO_UID_AUTH = 0x0001          # kcore.h KOPANO_LOGON_NO_UID_AUTH
NO_REGISTER_SESSION = 0x0002
SESSION_TIMEOUT = 300  # kopano-server's server.cfg default
# {50a921ac-d340-48ee-b319-fba753304425}, the Kopano address book provider, little-endian
AB_GUID = uuid.UUID("50a921ac-d340-48ee-b319-fba753304425").bytes_le
PR_GIVEN_NAME_A, PR_SURNAME_A = 0x3A06001E, 0x3A11001E


@dataclass
class KopanoUser:
    username: str
    password: str
    user_id: int
    full_name: str = ""
    email: str = ""
    exid: bytes = b""                # the external id; default: str(user_id)
    given_name: Optional[str] = None  # sent as properties when either is set
    surname: Optional[str] = None
    non_active: bool = False

    @property
    def entry_id(self) -> bytes:
        """v1 ABEID: flags, GUID, version 1, MAPI_MAILUSER, id, NUL-padded base64 ExID."""
        ex = base64.b64encode(self.exid or str(self.user_id).encode())
        ex += b"\0" * (4 - len(ex) % 4)
        return b"\0" * 4 + AB_GUID + struct.pack("<III", 1, 6, self.user_id) + ex


def _exid_of(entry_id: bytes) -> Optional[bytes]:
    if len(entry_id) <= 32 or entry_id[4:20] != AB_GUID or entry_id[20:24] != b"\1\0\0\0":
        return None
    try:
        return base64.b64decode(entry_id[32:].rstrip(b"\0"), validate=True)
    except ValueError:
        return None


@dataclass
class _State:
    users: dict = field(default_factory=dict)      # username.lower() -> KopanoUser
    sessions: dict = field(default_factory=dict)   # session id -> username
    used: dict = field(default_factory=dict)       # session id -> last use (stand-in clock)
    logons: list = field(default_factory=list)     # (username, password, ulFlags, er)
    sso_logons: list = field(default_factory=list)  # SSOLogon (one per ssoLogon call)
    logoffs: list = field(default_factory=list)    # session ids
    calls: list = field(default_factory=list)      # operation names, in order
    session_calls: list = field(default_factory=list)  # (operation, session id)
    transports: set = field(default_factory=set)   # "tcp" / "unix": where calls came in


@dataclass
class SSOLogon:
    """One ssoLogon as the stand-in saw it: what was sent and what it answered."""
    username: str          # szUsername
    prefix: bytes          # the first 6 bytes of lpInput
    token: str             # the rest (the JWT), as sent
    header: dict           # the JWT's header and claims, when it parsed
    claims: dict
    er: int
    reason: str            # why it was refused ("" when it was not)
    session: int


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _int(value: str) -> int:
    return int.from_bytes(_b64url(value), "big")


def _verify_jws(alg: str, jwk: dict, signing_input: bytes, signature: bytes) -> bool:
    """The JWS signature of RFC 7518 §3.3-3.5 with the JWK's public key (RSA or EC)."""
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}[alg[2:]]()
    try:
        if alg[:2] in ("RS", "PS") and jwk.get("kty") == "RSA":
            key = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
            pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(
                mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            key.verify(signature, signing_input, pad, digest)
            return True
        if alg.startswith("ES") and jwk.get("kty") == "EC":
            curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}[jwk["crv"]]()
            key = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), curve).public_key()
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signing_input, ec.ECDSA(digest))
            return True
    except (InvalidSignature, KeyError, ValueError):
        return False
    return False


class KopanoStandIn:
    """`with KopanoStandIn(users, unix_socket=True) as kc:` then `kc.url` / `kc.file_uri`."""

    def __init__(self, users: Iterable[KopanoUser] = (), *, unix_socket: bool = False) -> None:
        self.state = _State(users={u.username.lower(): u for u in users})
        self.lock = threading.Lock()
        self.delay = 0.0          # seconds before each answer (concurrency tests)
        self.fault = False        # answer every call with a SOAP fault
        self.trickle = 0.0        # > 0: answer with headers, then one body byte every N s
        self.trickling = 0        # connections being trickled to right now
        self.session_timeout = SESSION_TIMEOUT  # idle seconds before a session is gone
        self.enable_sso = True    # server.cfg enable_sso
        # the unix socket peer is a local admin (server.cfg local_admin_users: root, kopano):
        # the server then authenticates a logon by the peer's uid, whatever the password,
        # unless the client sent NO_UID_AUTH
        self.local_admin_peer = False
        self._trusted: Optional[tuple] = None   # (jwks, algs): the KCOIDC issuer's keys
        self._clock_offset = 0.0
        self._ids = itertools.count(0x1234567890)
        self._unix = unix_socket
        self._dir: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self.port = 0

    # --- test controls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def socket_path(self) -> str:
        assert self._dir, "started without unix_socket=True"
        return os.path.join(self._dir, "server.sock")

    @property
    def file_uri(self) -> str:
        return "file://" + self.socket_path

    def add_user(self, user: KopanoUser) -> None:
        with self.lock:
            self.state.users[user.username.lower()] = user

    def remove_user(self, username: str) -> None:
        with self.lock:
            del self.state.users[username.lower()]

    def end_sessions(self) -> None:
        """The server forgets every session (restart, timeout): calls get END_OF_SESSION."""
        with self.lock:
            self.state.sessions.clear()
            self.state.used.clear()

    def set_active(self, username: str, active: bool) -> None:
        with self.lock:
            self.state.users[username.lower()].non_active = not active

    def trust_issuer(self, jwks: dict, algs: Iterable[str]) -> None:
        """KCOIDC: the OP's JWKS and `id_token_signing_alg_values_supported`, as libkcoidc
        reads them from the issuer's discovery document (server.cfg kcoidc_issuer_identifier)."""
        with self.lock:
            self._trusted = ({k["kid"]: k for k in jwks["keys"] if "kid" in k}, set(algs))

    def now(self) -> float:
        return time.monotonic() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock: sessions idle for longer than session_timeout expire."""
        with self.lock:
            self._clock_offset += seconds

    def live_sessions(self, username: str) -> list:
        """Session ids of `username` that have not expired."""
        with self.lock:
            return [sid for sid, name in list(self.state.sessions.items())
                    if name.lower() == username.lower() and self._alive(sid)]

    # --- lifecycle

    def start(self) -> "KopanoStandIn":
        sockets = []
        sock, self.port = tornado.testing.bind_unused_port()
        sockets.append(sock)
        if self._unix:
            self._dir = tempfile.mkdtemp(prefix="kc-")
            sockets.append(tornado.netutil.bind_unix_socket(self.socket_path))
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sockets, ready),),
                                        name="kopano-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("kopano stand-in did not start")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "KopanoStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _serve(self, sockets, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = tornado.web.Application([(r"/.*", _SOAPHandler, {"standin": self})])
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        ready.set()
        await self._stop.wait()
        server.stop()
        await server.close_all_connections()

    # --- SOAP

    def answer(self, body: bytes, transport: str = "tcp") -> tuple[int, bytes]:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        try:
            call = etree.fromstring(body, parser).find(f"{{{SOAP_ENV}}}Body")[0]
            op = etree.QName(call)
        except (etree.XMLSyntaxError, TypeError, IndexError, ValueError):
            return 500, _fault("SOAP-ENV:Client", "malformed SOAP request")
        if self.fault:
            return 500, _fault("SOAP-ENV:Server", "stand-in told to fail")
        handler = getattr(self, f"_op_{op.localname}", None)
        if op.namespace != "urn:zarafa" or handler is None:
            return 500, _fault("SOAP-ENV:Client", f"Method '{op.localname}' not implemented")
        params = {child.tag: child.text or "" for child in call}
        params["__transport"] = transport
        with self.lock:
            self.state.calls.append(op.localname)
            name, fields = handler(params)
        return 200, _envelope(name, fields)

    def _alive(self, sid: int) -> bool:
        """Whether session `sid` exists and has not been idle too long (then it is gone)."""
        if sid not in self.state.sessions:
            return False
        if self.now() - self.state.used.get(sid, self.now()) > self.session_timeout:
            del self.state.sessions[sid]
            self.state.used.pop(sid, None)
            return False
        return True

    def _session(self, p: dict, op: str) -> int:
        """The request's session id if it is alive (and refreshed), else 0."""
        sid = int(p.get("ulSessionId") or 0)
        self.state.session_calls.append((op, sid))
        if not self._alive(sid):
            return 0
        self.state.used[sid] = self.now()
        return sid

    def _register(self, username: str) -> int:
        sid = next(self._ids)
        self.state.sessions[sid] = username
        self.state.used[sid] = self.now()
        return sid

    def _op_logon(self, p: dict) -> tuple:
        user = self.state.users.get(p.get("szUsername", "").lower())
        flags = int(p.get("ulFlags") or 0)
        by_uid = self.local_admin_peer and p["__transport"] == "unix" and not flags & NO_UID_AUTH
        ok = user is not None and not user.non_active \
            and (by_uid or p.get("szPassword") == user.password)
        sid = 0
        if ok and not flags & NO_REGISTER_SESSION:
            sid = self._register(user.username)
        er = 0 if ok else KCERR_LOGON_FAILED
        self.state.logons.append((p.get("szUsername"), p.get("szPassword"), flags, er))
        return "logonResponse", [("er", er), ("ulSessionId", sid), ("lpszVersion", "8.7.0"),
                                 ("ulCapabilities", 0x210), ("sLicenseResponse", b""),
                                 ("sServerGuid", AB_GUID)]

    def _op_ssoLogon(self, p: dict) -> tuple:
        """kopano-core ns__ssoLogon with a KCOIDC input (see the module docstring)."""
        username = p.get("szUsername")
        try:
            data = base64.b64decode(p.get("lpInput") or "", validate=True)
        except ValueError:
            data = b""
        record = SSOLogon(username=username or "", prefix=data[:6],
                          token=data[6:].decode("ascii", "replace"), header={}, claims={},
                          er=KCERR_LOGON_FAILED, reason="", session=0)
        record.reason = self._check_sso(p, data, record)
        user = None
        if not record.reason:
            user = self._sso_user(record)
            if user is None:
                record.reason = "no such user"
        if user is not None:
            record.er, record.session = 0, self._register(user.username)
        self.state.sso_logons.append(record)
        return "ssoLogonResponse", [("er", record.er), ("ulSessionId", record.session),
                                    ("lpszVersion", "0,8,7,0"), ("ulCapabilities", 0x210),
                                    ("lpOutput", None), ("sServerGuid", AB_GUID)]

    def _check_sso(self, p: dict, data: bytes, record: SSOLogon) -> str:
        """Why an ssoLogon is refused (kopano-core and libkcoidc), or ""."""
        if not data or p.get("szUsername") is None or p.get("clientVersion") is None:
            return "missing input, szUsername or clientVersion"
        if not self.enable_sso:
            return "enable_sso is off"
        if not data.startswith(b"KCOIDC"):
            return "not a KCOIDC input"
        if self._trusted is None:
            return "no kcoidc issuer configured"
        keys, algs = self._trusted
        parts = record.token.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not a compact JWS")
            record.header = json.loads(_b64url(parts[0]))
            record.claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except ValueError as err:
            return f"malformed token: {err}"
        alg, kid = record.header.get("alg"), record.header.get("kid")
        if alg not in algs:
            return f"alg {alg!r} not published"
        if kid not in keys:
            return "unknown kid"
        if not _verify_jws(alg, keys[kid], f"{parts[0]}.{parts[1]}".encode(), signature):
            return "bad signature"
        claims, now = record.claims, time.time()
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < now:
            return "expired"
        if claims.get("nbf", 0) > now or claims.get("iat", 0) > now:
            return "not yet valid"
        if claims.get("kc.isAccessToken") is not True:
            return "not a kc access token"
        if "kopano/gc" not in (claims.get("kc.authorizedScopes") or []):
            return "kopano/gc scope missing"
        return ""

    def _sso_user(self, record: SSOLogon) -> Optional[KopanoUser]:
        identity = record.claims.get("kc.identity")
        user_id = identity.get("kc.i.id") if isinstance(identity, dict) else None
        if not isinstance(user_id, str) or not user_id:
            user_id = record.claims.get("sub") or ""
        try:
            exid = _exid_of(base64.b64decode(user_id, validate=True))
            named = _exid_of(base64.b64decode(record.username, validate=True)) \
                if record.username else exid
        except ValueError:
            return None
        if exid is None or named != exid:   # CompareABEID(szUsername, the token's user)
            return None
        user = next((u for u in self.state.users.values()
                     if (u.exid or str(u.user_id).encode()) == exid), None)
        return user if user is not None and not user.non_active else None

    def _op_logoff(self, p: dict) -> tuple:
        sid = int(p.get("ulSessionId") or 0)
        self.state.logoffs.append(sid)
        alive = self._alive(sid)
        self.state.sessions.pop(sid, None)
        self.state.used.pop(sid, None)
        return "logoffResponse", [("er", 0 if alive else KCERR_END_OF_SESSION)]

    def _op_resolveUsername(self, p: dict) -> tuple:
        if not self._session(p, "resolveUsername"):
            return "resolveUserResponse", [("ulUserId", 0), ("sUserId", b""), ("er", KCERR_END_OF_SESSION)]
        user = self.state.users.get(p.get("lpszUsername", "").lower())
        if user is None:
            return "resolveUserResponse", [("ulUserId", 0), ("sUserId", b""), ("er", KCERR_NOT_FOUND)]
        return "resolveUserResponse", [("ulUserId", user.user_id), ("sUserId", user.entry_id), ("er", 0)]

    def _op_getUser(self, p: dict) -> tuple:
        if not self._session(p, "getUser"):
            return "getUserResponse", [("lpsUser", None), ("er", KCERR_END_OF_SESSION)]
        try:
            exid = _exid_of(base64.b64decode(p.get("sUserId", ""), validate=True))
        except ValueError:
            exid = None
        if exid is None:
            return "getUserResponse", [("lpsUser", None), ("er", KCERR_INVALID_ENTRYID)]
        # v1 ABEIDs are matched by ExID (GUID and type checked, the numeric id ignored)
        user = next((u for u in self.state.users.values()
                     if (u.exid or str(u.user_id).encode()) == exid), None)
        if user is None:
            return "getUserResponse", [("lpsUser", None), ("er", KCERR_NOT_FOUND)]
        props = [(PR_GIVEN_NAME_A, user.given_name), (PR_SURNAME_A, user.surname)]
        props = [("item", [("ulPropId", tag), ("lpszValue", value)])
                 for tag, value in props if value is not None]
        record = [("ulUserId", user.user_id), ("lpszUsername", user.username),
                  ("lpszPassword", None), ("lpszMailAddress", user.email),
                  ("lpszFullName", user.full_name), ("ulIsAdmin", 0),
                  ("ulIsNonActive", int(user.non_active)),
                  ("lpsPropmap", _Array("ns:propmapPair", props) if props else None),
                  ("lpsMVPropmap", _Array("ns:propmapMVPair", [])),
                  ("sUserId", user.entry_id), ("ulObjClass", 0x10001)]
        return "getUserResponse", [("lpsUser", record), ("er", 0)]


class _Array(list):
    def __init__(self, item_type: str, items: list) -> None:
        super().__init__(items)
        self.item_type = item_type


def _fill(parent: etree._Element, fields: list) -> None:
    for name, value in fields:
        child = etree.SubElement(parent, name)
        if value is None:
            child.set(f"{{{XSI}}}nil", "true")
        elif isinstance(value, _Array):
            child.set(f"{{{SOAP_ENC}}}arrayType", f"{value.item_type}[{len(value)}]")
            _fill(child, value)
        elif isinstance(value, list):
            _fill(child, value)
        elif isinstance(value, bytes):
            child.text = base64.b64encode(value).decode("ascii")
        else:
            child.text = str(value)


def _envelope(name: str, fields: list) -> bytes:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=NSMAP)
    body = etree.SubElement(env, f"{{{SOAP_ENV}}}Body")
    body.set(f"{{{SOAP_ENV}}}encodingStyle", SOAP_ENC)
    _fill(etree.SubElement(body, f"{{urn:zarafa}}{name}"), fields)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _fault(code: str, text: str) -> bytes:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=NSMAP)
    fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP_ENV}}}Body"), f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = text
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


class _SOAPHandler(tornado.web.RequestHandler):
    def initialize(self, standin: KopanoStandIn) -> None:
        self.standin = standin

    async def post(self) -> None:
        family = self.request.connection.stream.socket.family
        transport = "unix" if family == socket.AF_UNIX else "tcp"
        self.standin.state.transports.add(transport)
        if self.standin.delay:
            await asyncio.sleep(self.standin.delay)
        if self.standin.trickle:
            await self._trickle()
            return
        status, body = self.standin.answer(self.request.body, transport)
        self.set_status(status)
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        self.finish(body)

    async def _trickle(self) -> None:
        """A server that is alive but never finishes: every read gets a byte in time."""
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        self.set_header("Content-Length", "1000000")
        self.standin.trickling += 1
        try:
            await self.flush()
            while self.standin.trickle and not self.standin._stop.is_set():
                self.write(b" ")
                await self.flush()
                await asyncio.sleep(self.standin.trickle)
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.standin.trickling -= 1
        self.request.connection.close()
