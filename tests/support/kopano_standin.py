"""A stand-in for the Kopano server's SOAP interface, for the `kc` backend tests.

No real Kopano server can be installed on this machine, so this small Tornado app answers
the four operations the backend calls (logon, logoff, resolveUsername, getUser) the way
the documented wire format describes them (konnect.md §4.2, deps.md §5): gSOAP-style
envelopes with `SOAP-ENV:encodingStyle` on the Body, unqualified fields in declaration
order plus fields the backend does not read, Kopano error codes in `er`, and SOAP faults
for malformed or unknown calls. It runs on its own event loop in a thread, on a bound TCP
port and optionally on a unix socket, with an in-memory user table the test hands in.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import socket
import struct
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.testing
import tornado.web
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
NO_REGISTER_SESSION = 0x0002
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
    logons: list = field(default_factory=list)     # (username, password, ulFlags, er)
    logoffs: list = field(default_factory=list)    # session ids
    calls: list = field(default_factory=list)      # operation names, in order
    transports: set = field(default_factory=set)   # "tcp" / "unix": where calls came in


class KopanoStandIn:
    """`with KopanoStandIn(users, unix_socket=True) as kc:` then `kc.url` / `kc.file_uri`."""

    def __init__(self, users: Iterable[KopanoUser] = (), *, unix_socket: bool = False) -> None:
        self.state = _State(users={u.username.lower(): u for u in users})
        self.lock = threading.Lock()
        self.delay = 0.0          # seconds before each answer (concurrency tests)
        self.fault = False        # answer every call with a SOAP fault
        self.trickle = 0.0        # > 0: answer with headers, then one body byte every N s
        self.trickling = 0        # connections being trickled to right now
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

    def answer(self, body: bytes) -> tuple[int, bytes]:
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
        with self.lock:
            self.state.calls.append(op.localname)
            name, fields = handler(params)
        return 200, _envelope(name, fields)

    def _op_logon(self, p: dict) -> tuple:
        user = self.state.users.get(p.get("szUsername", "").lower())
        flags = int(p.get("ulFlags") or 0)
        ok = user is not None and not user.non_active and p.get("szPassword") == user.password
        sid = 0
        if ok and not flags & NO_REGISTER_SESSION:
            sid = next(self._ids)
            self.state.sessions[sid] = user.username
        er = 0 if ok else KCERR_LOGON_FAILED
        self.state.logons.append((p.get("szUsername"), p.get("szPassword"), flags, er))
        return "logonResponse", [("er", er), ("ulSessionId", sid), ("lpszVersion", "8.7.0"),
                                 ("ulCapabilities", 0x210), ("sLicenseResponse", b""),
                                 ("sServerGuid", AB_GUID)]

    def _op_logoff(self, p: dict) -> tuple:
        sid = int(p.get("ulSessionId") or 0)
        self.state.logoffs.append(sid)
        er = 0 if self.state.sessions.pop(sid, None) else KCERR_END_OF_SESSION
        return "logoffResponse", [("er", er)]

    def _op_resolveUsername(self, p: dict) -> tuple:
        if int(p.get("ulSessionId") or 0) not in self.state.sessions:
            return "resolveUserResponse", [("ulUserId", 0), ("sUserId", b""), ("er", KCERR_END_OF_SESSION)]
        user = self.state.users.get(p.get("lpszUsername", "").lower())
        if user is None:
            return "resolveUserResponse", [("ulUserId", 0), ("sUserId", b""), ("er", KCERR_NOT_FOUND)]
        return "resolveUserResponse", [("ulUserId", user.user_id), ("sUserId", user.entry_id), ("er", 0)]

    def _op_getUser(self, p: dict) -> tuple:
        if int(p.get("ulSessionId") or 0) not in self.state.sessions:
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
        self.standin.state.transports.add("unix" if family == socket.AF_UNIX else "tcp")
        if self.standin.delay:
            await asyncio.sleep(self.standin.delay)
        if self.standin.trickle:
            await self._trickle()
            return
        status, body = self.standin.answer(self.request.body)
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
