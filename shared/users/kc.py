"""The `kc` backend: users of a Kopano Groupware Storage server, over SOAP (konnect.md §4.2).

The only module that talks to the Kopano server, and the only `import zeep`. zeep is built
from our own minimal WSDL (`kopano.wsdl`: logon, logoff, resolveUsername, getUser) and never
fetches anything from the network. zeep is synchronous, so every call runs in a bounded
thread pool. `KOPANO_SERVER_DEFAULT_URI` may be http://, https:// or file:// (a unix
socket, spoken to with a small requests adapter of our own).

Timeouts (security.md FT-10): `--kc-timeout` bounds every connect and every socket read,
and each call (authenticate, lookup: several SOAP requests) has an overall deadline of
three timeouts (30 s by default, Konnect's HTTP client timeout), after which it answers
`BackendUnavailable` (503). Read timeouts alone cannot bound a server that trickles one
byte at a time, so when the deadline passes the worker's connection is shut down
(`_Deadline.abort`) and its next step fails at once: a hung server never holds a worker
beyond the deadline, and the pool cannot be exhausted for longer than that.

* authenticate: `logon` with the user's credentials (flag NO_UID_AUTH, so the socket peer's
  uid never authenticates anyone), then resolveUsername and getUser; the user's session is
  logged off at once. With a global session the logon is not registered (NO_REGISTER_SESSION)
  and the lookups use the global session.
* lookup: getUser on the global session (KOPANO_SERVER_USERNAME, or SYSTEM with a client
  certificate), reused until it has been idle for the session timeout minus 60 s and
  re-established after KCERR_END_OF_SESSION (3 retries, 50 ms apart). Per-user SSO sessions
  (KCOIDC) are not implemented: without a global session, lookups are unavailable.
* raw subject = base64url (no padding) of the ExID in the user's v1 ABEID, as in Konnect,
  so public subjects survive a migration. lookup rebuilds a v1 ABEID from it (id 0; the
  server matches v1 ABEIDs by ExID) and checks the ExID of the answer.

No real Kopano server can be installed on this machine (Debian 12 has no package), so this
backend is tested against a stand-in (tests/support/kopano_standin.py) that follows the
documented SOAP operations; the wire format is not verified against a real server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import unquote, urlsplit

import requests
import urllib3
import zeep
import zeep.exceptions
from lxml import etree

from ..identity import Identity
from .base import BackendUnavailable, UserBackend

log = logging.getLogger("konnect.users.kc")

PROVIDER = "identifier-kc"
WSDL_PATH = Path(__file__).with_name("kopano.wsdl")
BINDING = "{urn:zarafa}KCmd"
CLIENT_APP = ("konnect", "py")

# Kopano error codes (`er`), logon flags and capabilities.
KCERR_NOT_FOUND = 0x80000002
KCERR_NO_ACCESS = 0x80000003
KCERR_LOGON_FAILED = 0x80000009
KCERR_END_OF_SESSION = 0x80000010
KCERR_INVALID_ENTRYID = 0x80000016
KCERR_OBJECT_DELETED = 0x8000002C
LOGON_NO_REGISTER_SESSION = 0x0002
LOGON_NO_UID_AUTH = 0x1000
CAPABILITIES = 0x0200 | 0x0010  # KOPANO_CAP_UNICODE | KOPANO_CAP_LARGE_SESSIONID
PR_GIVEN_NAME_A = 0x3A06001E
PR_SURNAME_A = 0x3A11001E

# v1 address book entry id: 4 flag bytes, the Kopano AB provider GUID, then little-endian
# version, MAPI type and object id, then the base64 ExID, NUL-terminated to a multiple of 4.
MUIDECSAB = uuid.UUID("50a921ac-d340-48ee-b319-fba753304425").bytes_le
MAPI_MAILUSER = 6
_ABEID_HEAD = struct.Struct("<4s16sIII")

SESSION_MARGIN = 60.0
RETRIES, RETRY_DELAY = 3, 0.05
_NOT_THERE = (KCERR_NOT_FOUND, KCERR_INVALID_ENTRYID, KCERR_OBJECT_DELETED)


def abeid_exid(entry_id: Optional[bytes]) -> Optional[bytes]:
    """The ExID of a v1 ABEID from the Kopano AB provider, or None."""
    if not entry_id or len(entry_id) <= _ABEID_HEAD.size:
        return None
    _, guid, version, _, _ = _ABEID_HEAD.unpack_from(entry_id)
    if guid != MUIDECSAB or version != 1:
        return None
    try:
        return base64.b64decode(entry_id[_ABEID_HEAD.size:].rstrip(b"\0"), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def make_abeid(exid: bytes, object_id: int = 0) -> bytes:
    encoded = base64.b64encode(exid)
    encoded += b"\0" * (4 - len(encoded) % 4)
    return _ABEID_HEAD.pack(b"\0" * 4, MUIDECSAB, 1, MAPI_MAILUSER, object_id) + encoded


def raw_sub_for(exid: bytes) -> str:
    return base64.urlsafe_b64encode(exid).rstrip(b"=").decode("ascii")


def _exid_of(raw_sub: str) -> Optional[bytes]:
    try:
        return base64.urlsafe_b64decode(raw_sub + "=" * (-len(raw_sub) % 4)) or None
    except (binascii.Error, ValueError):
        return None


class _Deadline:
    """The overall deadline of one backend call, shared by the event loop and the worker.

    The worker checks it before every SOAP request and caps each request's socket timeout
    by the time left; the connections it sends on are tracked so that `abort` (from the
    event loop, when the deadline passed or the caller went away) can shut them down and
    wake a worker that is blocked reading.
    """

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._connections: set = set()
        self._aborted = False

    def remaining(self) -> float:
        if self._aborted:
            return 0.0
        return self.expires - time.monotonic()

    def check(self) -> float:
        """The time left; BackendUnavailable when there is none."""
        left = self.remaining()
        if left <= 0:
            raise BackendUnavailable("kopano server: no answer in time")
        return left

    def socket_timeout(self, timeout: float) -> float:
        return min(timeout, self.check())

    def track(self, connection: Any) -> None:
        with self._lock:
            if self._aborted:
                raise BackendUnavailable("kopano server: no answer in time")
            self._connections.add(connection)

    def finish(self) -> None:
        with self._lock:
            self._connections.clear()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            connections, self._connections = self._connections, set()
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is not None:
                try:  # the plain socket's shutdown, also for TLS: the worker's read gets EOF
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


_current = threading.local()  # .deadline: the _Deadline of the call this worker runs


class _TrackedConnection:
    """Registers itself with the running call's deadline before each request."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.track(self)
        return super().request(*args, **kwargs)


class _HTTPConnection(_TrackedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_TrackedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_TRACKED_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _TrackedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections a call's deadline can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_TRACKED_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is urllib3.ProxyManager:  # not SOCKS: its pools are its own
            manager.pool_classes_by_scheme = dict(_TRACKED_POOLS)
        return manager


class _UnixConnection(urllib3.connection.HTTPConnection):
    socket_path = ""

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else None)
        try:
            sock.connect(self.socket_path)
        except OSError as err:
            sock.close()
            if isinstance(err, TimeoutError):
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"connecting to {self.socket_path} timed out") from err
            raise urllib3.exceptions.NewConnectionError(
                self, f"cannot connect to {self.socket_path}: {err}") from err
        return sock


class UnixSocketAdapter(requests.adapters.HTTPAdapter):
    """HTTP over one unix socket, whatever host the URL names (requests-unixsocket's job)."""

    def __init__(self, path: str, pool_maxsize: int = 10) -> None:
        self._pool = urllib3.HTTPConnectionPool("localhost", maxsize=pool_maxsize)
        self._pool.ConnectionCls = type("UnixConnection", (_TrackedConnection, _UnixConnection),
                                        {"socket_path": path})
        super().__init__(pool_maxsize=pool_maxsize)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def get_connection(self, url, proxies=None):
        return self._pool

    def request_url(self, request, proxies) -> str:
        return request.path_url

    def close(self) -> None:
        self._pool.close()
        super().close()


class _LocalTransport(zeep.Transport):
    """SOAP calls go out through `post`; `load` (WSDL, schemas) only ever reads local files."""

    def load(self, url: str) -> bytes:
        if urlsplit(str(url)).scheme not in ("", "file"):
            raise zeep.exceptions.TransportError(f"refusing to fetch {url}: the WSDL is local")
        return super().load(url)

    def post(self, address: str, message: bytes, headers: dict) -> requests.Response:
        """zeep's post, with each request's timeout capped by the call's deadline. (zeep's
        debug logging of the messages is left out: logon carries the user's password.)"""
        deadline = getattr(_current, "deadline", None)
        timeout = self.operation_timeout
        if deadline is not None:
            timeout = deadline.socket_timeout(timeout)
        return self.session.post(address, data=message, headers=headers, timeout=timeout)


class KCBackend(UserBackend):
    manager = "kc"
    provider = PROVIDER

    def __init__(self, uri: str = "file:///run/kopano/server.sock", *, username: str = "",
                 password: str = "", client_certificate: Optional[str] = None,
                 client_private_key: Optional[str] = None, session_timeout: float = 300,
                 insecure: bool = False, timeout: float = 10.0, max_workers: int = 4,
                 now: Callable[[], float] = time.monotonic) -> None:
        from . import BackendConfigError
        parts = urlsplit(uri)
        session = requests.Session()
        if parts.scheme == "file" and parts.path:
            session.trust_env = False
            session.mount("http+unix://", UnixSocketAdapter(unquote(parts.path), max_workers))
            address = "http+unix://kopano/"
        elif parts.scheme in ("http", "https") and parts.hostname:
            session.mount(f"{parts.scheme}://", _TrackedAdapter(pool_maxsize=max_workers))
            address = uri
        else:
            raise BackendConfigError(f"kopano_server_default_uri {uri!r}: must be http(s):// or file://")
        if client_certificate:
            if parts.scheme != "https":
                raise BackendConfigError("a Kopano client certificate needs an https:// server URI")
            session.cert = (str(client_certificate), str(client_private_key)) \
                if client_private_key else str(client_certificate)
        session.verify = not insecure
        self.uri = uri
        self.timeout = float(timeout)
        self.deadline = 3 * self.timeout  # a whole call, as the LDAP backend's
        self._requests = session
        transport = _LocalTransport(session=session, timeout=timeout, operation_timeout=timeout)
        settings = zeep.Settings(strict=False, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True, xml_huge_tree=False)
        self._client = zeep.Client(str(WSDL_PATH), transport=transport, settings=settings)
        self._service = self._client.create_service(BINDING, address)
        self._global_user = username or ("SYSTEM" if client_certificate else "")
        self._global_password = password
        self._reuse_for = max(1.0, float(session_timeout) - SESSION_MARGIN)
        self._now = now
        self._lock = threading.Lock()
        self._sid: Optional[int] = None
        self._sid_used = 0.0
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kc")
        self._closed = False
        if not self._global_user:
            log.warning("kc backend without a global session (KOPANO_SERVER_USERNAME): "
                        "lookups for userinfo and refresh are unavailable")

    @classmethod
    def from_settings(cls, settings: Any) -> "KCBackend":
        cert, key = settings.kopano_client_certificate, settings.kopano_client_private_key
        return cls(settings.kopano_server_default_uri,
                   username=settings.kopano_server_username,
                   password=settings.kopano_server_password,
                   client_certificate=str(cert) if cert else None,
                   client_private_key=str(key) if key else None,
                   session_timeout=settings.kopano_server_session_timeout,
                   timeout=settings.kc_timeout,
                   insecure=bool(getattr(settings, "insecure", False)))

    # --- the UserBackend interface

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        if not username or not password:
            return None
        return await self._run(self._authenticate, username, password)

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return await self._run(self._lookup, raw_sub)

    async def resolve(self, username: str) -> Optional[Identity]:
        if not username:
            return None
        return await self._run(self._resolve, username)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._drop_global, None, closing=True)
        except BackendUnavailable as err:
            log.info("kopano server: the global session was not logged off: %s", err)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._requests.close()

    async def _run(self, fn: Callable, *args: Any, closing: bool = False) -> Any:
        """`fn(*args)` in the pool, answered within the deadline or BackendUnavailable."""
        if self._closed and not closing:
            raise BackendUnavailable("kc backend is closed")
        deadline = _Deadline(self.deadline)
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._in_worker, deadline, fn, *args)
        try:
            return await asyncio.wait_for(future, self.deadline)
        except asyncio.TimeoutError:
            deadline.abort()  # frees the worker: its connection is shut down
            log.warning("kopano server %s: %s got no answer within %g s", self.uri,
                        fn.__name__.strip("_"), self.deadline)
            raise BackendUnavailable("kopano server: no answer in time") from None
        except asyncio.CancelledError:  # the request went away: free the worker too
            deadline.abort()
            raise

    @staticmethod
    def _in_worker(deadline: _Deadline, fn: Callable, *args: Any) -> Any:
        _current.deadline = deadline
        try:
            deadline.check()  # it may have waited in the queue past its deadline
            return fn(*args)
        finally:
            _current.deadline = None
            deadline.finish()

    # --- blocking work, in the thread pool

    def _authenticate(self, username: str, password: str) -> Optional[Identity]:
        flags = LOGON_NO_UID_AUTH | (LOGON_NO_REGISTER_SESSION if self._global_user else 0)
        result = self._logon(username, password, flags)
        if result.er in (KCERR_LOGON_FAILED, KCERR_NO_ACCESS, KCERR_NOT_FOUND):
            return None
        self._check(result.er, "logon")
        sid = result.ulSessionId or 0
        try:
            if not self._global_user and not sid:
                raise BackendUnavailable("kopano server logon returned no session")
            resolved = self._on_session(sid, "resolveUsername", lpszUsername=username)
            if resolved.er in _NOT_THERE:
                return None
            self._check(resolved.er, "resolveUsername")
            found = self._on_session(sid, "getUser", sUserId=resolved.sUserId)
            if found.er in _NOT_THERE:
                return None
            self._check(found.er, "getUser")
            return self._identity(found.lpsUser, abeid_exid(resolved.sUserId), username)
        finally:
            if sid:
                self._logoff(sid)

    def _resolve(self, username: str) -> Optional[Identity]:
        """resolveUsername and getUser on the global session (no user password)."""
        if not self._global_user:
            raise BackendUnavailable("kc resolve needs a global session (KOPANO_SERVER_USERNAME)")
        resolved = self._on_session(0, "resolveUsername", lpszUsername=username)
        if resolved.er in _NOT_THERE:
            return None
        self._check(resolved.er, "resolveUsername")
        found = self._on_session(0, "getUser", sUserId=resolved.sUserId)
        if found.er in _NOT_THERE:
            return None
        self._check(found.er, "getUser")
        if found.lpsUser is None or found.lpsUser.ulIsNonActive:
            return None
        return self._identity(found.lpsUser, abeid_exid(resolved.sUserId), username)

    def _lookup(self, raw_sub: str) -> Optional[Identity]:
        if not self._global_user:
            raise BackendUnavailable("kc lookup needs a global session (KOPANO_SERVER_USERNAME)")
        exid = _exid_of(raw_sub) if isinstance(raw_sub, str) else None
        if exid is None:
            return None
        found = self._on_session(0, "getUser", sUserId=make_abeid(exid))
        if found.er in _NOT_THERE:
            return None
        self._check(found.er, "getUser")
        user = found.lpsUser
        if user is None or user.ulIsNonActive:
            return None
        return self._identity(user, exid, "")

    def _identity(self, user: Any, exid: Optional[bytes], username: str) -> Optional[Identity]:
        exid_sent = abeid_exid(getattr(user, "sUserId", None)) if user is not None else None
        if exid is None or exid_sent != exid:
            raise BackendUnavailable("kopano server answered with an unexpected user entry id")
        full_name = user.lpszFullName or ""
        words = full_name.split(" ", 1)
        props = {p.ulPropId: p.lpszValue or ""
                 for p in (user.lpsPropmap.item if user.lpsPropmap is not None else [])}
        raw_sub = raw_sub_for(exid)
        return Identity(raw_sub=raw_sub, backend=PROVIDER,
                        username=user.lpszUsername or username, name=full_name,
                        given_name=props.get(PR_GIVEN_NAME_A, words[0]),
                        family_name=props.get(PR_SURNAME_A, words[1] if len(words) > 1 else ""),
                        email=user.lpszMailAddress or "", email_verified=True,
                        numeric_id=user.ulUserId, uuid=raw_sub,
                        extra={"entry_id": base64.b64encode(user.sUserId).decode("ascii")})

    def _on_session(self, sid: int, op: str, **params: Any) -> Any:
        """`op` on the user's session `sid`, or on the global session when `sid` is 0."""
        if sid:
            return self._call(op, ulSessionId=sid, **params)
        for attempt in range(RETRIES + 1):
            sid = self._global_session()
            result = self._call(op, ulSessionId=sid, **params)
            if result.er != KCERR_END_OF_SESSION:
                return result
            self._drop_global(sid)
            if attempt < RETRIES:
                time.sleep(RETRY_DELAY)
        raise BackendUnavailable("kopano server keeps ending the global session")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The global session lock, waited for no longer than the call's deadline."""
        deadline = getattr(_current, "deadline", None)
        if not self._lock.acquire(timeout=deadline.check() if deadline is not None else -1):
            raise BackendUnavailable("kopano server: no answer in time")
        try:
            yield
        finally:
            self._lock.release()

    def _global_session(self) -> int:
        with self._locked():
            if self._sid is not None and self._now() - self._sid_used < self._reuse_for:
                self._sid_used = self._now()
                return self._sid
            stale, self._sid = self._sid, None
            if stale is not None:
                self._logoff(stale)
            result = self._logon(self._global_user, self._global_password, 0)
            if result.er or not result.ulSessionId:
                log.error("kopano server refused the global session logon for %r: 0x%x",
                          self._global_user, result.er or 0)
                raise BackendUnavailable("kopano server refused the global session logon")
            self._sid, self._sid_used = result.ulSessionId, self._now()
            return self._sid

    def _drop_global(self, sid: Optional[int]) -> None:
        with self._locked():
            if self._sid is not None and sid in (None, self._sid):
                stale, self._sid = self._sid, None
                self._logoff(stale)

    def _logon(self, username: str, password: str, flags: int) -> Any:
        return self._call("logon", szUsername=username, szPassword=password,
                          szImpersonateUser="", ulCapabilities=CAPABILITIES, ulFlags=flags,
                          szClientApp=CLIENT_APP[0], szClientAppVersion=CLIENT_APP[1])

    def _logoff(self, sid: int) -> None:
        try:
            self._call("logoff", ulSessionId=sid)
        except BackendUnavailable as err:  # the server drops idle sessions anyway
            log.info("kopano server logoff failed: %s", err)

    def _check(self, er: Optional[int], op: str) -> None:
        if er:
            raise BackendUnavailable(f"kopano server {op} failed: 0x{er:x}")

    def _call(self, op: str, **params: Any) -> Any:
        """One SOAP request; whatever goes wrong is BackendUnavailable (security.md CR-05:
        never a 500). A 200 answer that is not SOAP (zeep's AttributeError on a missing
        root, IndexError on an empty Body) and an answer without an integer `er` (zeep,
        non-strict, reads `<er>garbage</er>` or a missing `er` as None, which read as
        "success" and then as "user gone") are the server failing, not an answer
        (konnect.md §4.2: every Kopano operation answers `er`)."""
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.check()
        try:
            result = getattr(self._service, op)(**params)
            er = getattr(result, "er", None)
            if not isinstance(er, int) or isinstance(er, bool):
                detail = "answer without an error code (er)"
            else:
                return result
        except BackendUnavailable:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
            if deadline is not None and deadline.remaining() <= 0:
                raise BackendUnavailable("kopano server: no answer in time") from None
            detail = f"{type(err).__name__}: {err}"
        except zeep.exceptions.Fault as err:
            detail = f"SOAP fault {err.code}: {err.message}"
        except (zeep.exceptions.Error, etree.LxmlError) as err:
            detail = f"{type(err).__name__}: {err}"
        except Exception as err:  # noqa: BLE001 - zeep on a malformed answer
            detail = f"malformed answer ({type(err).__name__})"
        raise BackendUnavailable(f"kopano server {self.uri} {op}: {detail}")
