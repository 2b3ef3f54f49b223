"""The `kc` backend: users of a Kopano Groupware Storage server, over SOAP.

The only module that talks to the Kopano server, and the only `import zeep`. zeep is built
from our own minimal WSDL (`kopano.wsdl`: logon, ssoLogon, logoff, resolveUsername,
getUser) and never fetches anything from the network. zeep is synchronous, so every call
runs in a bounded thread pool. `KOPANO_SERVER_DEFAULT_URI` may be http://, https:// or
file:// (a unix socket, spoken to with a small requests adapter of our own).

Two modes, as Konnect's identifier/backends/kc.go:

* Global session (`KOPANO_SERVER_USERNAME`, or SYSTEM with a client certificate): the
  user's logon is not registered (NO_REGISTER_SESSION); resolveUsername, getUser and every
  later lookup run on one global session, reused until it has been idle for the session
  timeout minus 60 s and re-established after KCERR_END_OF_SESSION (3 retries, 50 ms apart).
* Per-user sessions (neither is set; Konnect's usual set-up): the user's logon is
  registered and kept as that user's session. Later lookups of the user (authorize,
  hello, token refresh, userinfo) run on it; when there is none, or the server ended it,
  a new one is made with a single sign-on logon (`ssoLogon`, type KCOIDC: "KCOIDC" plus
  an access token of this OP for the user's entry ID with the `kopano/gc` scope, minted
  for that logon only, as Konnect's getSessionForUser). The server checks that token
  against this issuer's JWKS (server.cfg: `enable_sso = yes`, `kcoidc_issuer_identifier`).
  A refused single sign-on means the user is gone (or the server does not trust this
  issuer: logged as a warning). The session id lives in Redis, sealed under the encryption
  secret and bound to the user (`UserSessions`), so every process of every service uses
  the one session of a user; it is never logged. A sign-out logs it off (`end_session`).

Every logon flag is Kopano's (kcore.h): NO_UID_AUTH (0x0001), so the unix socket peer's
uid never authenticates anyone, and the password decides.

Timeouts: `--kc-timeout` is one deadline per logon and per lookup, whatever the number of
SOAP requests and Redis round trips inside it; each request's socket timeout is capped by
the time left. When it passes the call answers `BackendUnavailable` (503). Read timeouts
alone cannot bound a server that trickles one byte at a time, so the worker's connection
is then shut down (`_Deadline.abort`) and its next step fails at once: a hung server never
holds a worker beyond the deadline, and calls queued for a worker answer at their own
deadline too.

* raw subject = base64url (no padding) of the ExID in the user's v1 ABEID, as in Konnect,
  so public subjects survive a migration. A lookup rebuilds a v1 ABEID from it (id 0; the
  server matches v1 ABEIDs by ExID), or uses the entry ID the token carries (`kc.i.id`),
  and checks the ExID of the answer.

No real Kopano server can be installed on this machine (Debian 12 has no package), so this
backend is tested against a stand-in (tests/support/kopano_standin.py) that follows the
documented SOAP operations and kopano-core's KCOIDC checks; the wire format is not
verified against a real server.
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
from typing import Any, Callable, Iterator, Mapping, Optional
from urllib.parse import unquote, urlsplit

import requests
import urllib3
import zeep
import zeep.exceptions
from lxml import etree

from ..config import KC_SESSION_MARGIN
from ..identity import Identity
from ..sealed import SealError
from .base import BackendUnavailable, Deadline, UserBackend

log = logging.getLogger("konnect.users.kc")

PROVIDER = "identifier-kc"
WSDL_PATH = Path(__file__).with_name("kopano.wsdl")
BINDING = "{urn:zarafa}KCmd"
CLIENT_APP = ("konnect", "py")
CLIENT_VERSION = "8"  # the client API version kcc-go (Konnect's client) sends

# Kopano error codes (`er`), logon flags and capabilities.
KCERR_NOT_FOUND = 0x80000002
KCERR_NO_ACCESS = 0x80000003
KCERR_LOGON_FAILED = 0x80000009
KCERR_END_OF_SESSION = 0x80000010
KCERR_INVALID_ENTRYID = 0x80000016
KCERR_OBJECT_DELETED = 0x8000002C
LOGON_NO_UID_AUTH = 0x0001          # KOPANO_LOGON_NO_UID_AUTH (kcore.h)
LOGON_NO_REGISTER_SESSION = 0x0002  # KOPANO_LOGON_NO_REGISTER_SESSION
SSO_KCOIDC = b"KCOIDC"              # ssoLogon input prefix (kcc-go KOPANO_SSO_TYPE_KCOIDC)
SSO_SCOPES = ("openid", "kopano/gc")  # what the server requires of the token (and Konnect grants)
CAPABILITIES = 0x0200 | 0x0010  # KOPANO_CAP_UNICODE | KOPANO_CAP_LARGE_SESSIONID
PR_GIVEN_NAME_A = 0x3A06001E
PR_SURNAME_A = 0x3A11001E

# v1 address book entry id: 4 flag bytes, the Kopano AB provider GUID, then little-endian
# version, MAPI type and object id, then the base64 ExID, NUL-terminated to a multiple of 4.
MUIDECSAB = uuid.UUID("50a921ac-d340-48ee-b319-fba753304425").bytes_le
MAPI_MAILUSER = 6
_ABEID_HEAD = struct.Struct("<4s16sIII")

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


class _Deadline(Deadline):
    """The one deadline of a backend call (a logon, a lookup), whatever the number of SOAP
    requests and Redis round trips inside it (`Deadline`), plus: the connections the worker
    sends on are tracked so that `abort` (from the event loop, when the deadline passed or
    the caller went away) can shut them down and wake a worker that is blocked reading."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds, "kopano server")
        self.seconds = seconds
        self._lock = threading.Lock()
        self._connections: set = set()
        self._aborted = False

    def remaining(self) -> float:
        if self._aborted:
            return 0.0
        return super().remaining()

    async def wait(self, awaitable: Any) -> Any:
        """`awaitable` (a Redis round trip) within the time left, else BackendUnavailable."""
        try:
            return await asyncio.wait_for(awaitable, max(self.remaining(), 0.001))
        except asyncio.TimeoutError:
            raise BackendUnavailable("kopano backend: no answer in time") from None

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


class UserSessions:
    """The Kopano session of each user (per-user mode), shared by every process of every
    service through Redis: `kv:kc-session:<sha256(raw subject)>`, the session id sealed
    under the encryption secret together with the raw subject (a value copied under another
    user's key does not open), kept `ttl` seconds after its last use (the server's session
    timeout minus a margin; every use renews it, as every call renews the session on the
    server). The session id is a credential: only its sealed form leaves the process, and
    it is never logged."""

    KIND = "kc-session"
    SEALED_FOR = 24 * 3600  # then a single sign-on makes a new one

    def __init__(self, store: Any, sealer: Any, ttl: int) -> None:
        self.store, self.sealer, self.ttl = store, sealer, max(1, int(ttl))

    async def get(self, raw_sub: str) -> int:
        """The user's session id, or 0 (none, expired, or not readable)."""
        sealed = await self.store.get_json(self.KIND, raw_sub, refresh_ttl=self.ttl)
        try:
            value = self.sealer.unseal(self.KIND, sealed)
        except SealError:
            return 0
        if not isinstance(value, dict) or value.get("sub") != raw_sub:
            return 0
        sid = value.get("sid")
        return sid if isinstance(sid, int) and not isinstance(sid, bool) and sid > 0 else 0

    async def put(self, raw_sub: str, sid: int) -> None:
        sealed = self.sealer.seal(self.KIND, {"sub": raw_sub, "sid": int(sid)}, self.SEALED_FOR)
        await self.store.put_json(self.KIND, raw_sub, sealed, self.ttl)

    async def take(self, raw_sub: str) -> int:
        """The user's session id, removed from the store (a sign-out), or 0."""
        sid = await self.get(raw_sub)
        await self.store.delete(self.KIND, raw_sub)
        return sid


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
        self.deadline = self.timeout  # one deadline for a whole logon or lookup
        self._requests = session
        transport = _LocalTransport(session=session, timeout=timeout, operation_timeout=timeout)
        settings = zeep.Settings(strict=False, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True, xml_huge_tree=False)
        self._client = zeep.Client(str(WSDL_PATH), transport=transport, settings=settings)
        self._service = self._client.create_service(BINDING, address)
        self._global_user = username or ("SYSTEM" if client_certificate else "")
        self._global_password = password
        self._reuse_for = max(1.0, float(session_timeout) - KC_SESSION_MARGIN)
        self._now = now
        self._lock = threading.Lock()
        self._sid: Optional[int] = None
        self._sid_used = 0.0
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kc")
        self._closed = False
        # per-user mode: where users' sessions live, and the single sign-on token minter
        self.sessions: Optional[UserSessions] = None
        self._mint: Optional[Callable[[str], str]] = None

    @property
    def per_user(self) -> bool:
        """Per-user Kopano sessions (no global session user, no client certificate)."""
        return not self._global_user

    @classmethod
    def from_settings(cls, settings: Any) -> "KCBackend":
        cert, key = settings.kopano_client_certificate, settings.kopano_client_private_key
        backend = cls(settings.kopano_server_default_uri,
                      username=settings.kopano_server_username,
                      password=settings.kopano_server_password,
                      client_certificate=str(cert) if cert else None,
                      client_private_key=str(key) if key else None,
                      session_timeout=settings.kopano_server_session_timeout,
                      timeout=settings.kc_timeout,
                      insecure=bool(getattr(settings, "insecure", False)))
        if backend.per_user:
            log.info("kc backend with per-user Kopano sessions (no KOPANO_SERVER_USERNAME): "
                     "lookups use single sign-on (KCOIDC) when a user's session is gone; "
                     "access tokens live %d s (KOPANO_SERVER_SESSION_TIMEOUT - %d s)",
                     settings.access_token_expiration, KC_SESSION_MARGIN)
        return backend

    def bind(self, core: Any) -> None:
        """Per-user mode: users' sessions live in the store (sealed), and single sign-on
        tokens are minted with the OP's signing key (`Tokens.kopano_sso_token`)."""
        if self.per_user:
            self.sessions = UserSessions(core.store, core.sealer, int(self._reuse_for))
            self._mint = core.tokens.kopano_sso_token

    # --- the UserBackend interface

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        if not username or not password:
            return None
        deadline = _Deadline(self.deadline)
        if not self.per_user:
            return await self._run(deadline, self._authenticate, username, password)
        sessions = self._user_sessions()
        result = await self._run(deadline, self._authenticate, username, password)
        if result is None:
            return None
        identity, sid = result
        try:
            await deadline.wait(sessions.put(identity.raw_sub, sid))
        except BaseException:
            self._forget(sid)
            raise
        return identity

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        return await self._find(raw_sub, None)

    async def current(self, raw_sub: str, kc_identity: Mapping[str, Any]) -> Optional[Identity]:
        """Konnect looks the user up by the entry ID of the token (`kc.i.id`); it is used
        when it names the same user (ExID) as the raw subject."""
        entry_id = kc_identity.get("kc.i.id") if isinstance(kc_identity, Mapping) else None
        return await self._find(raw_sub, entry_id if isinstance(entry_id, str) else None)

    async def end_session(self, identity: Identity) -> None:
        """A sign-out: the user's Kopano session is logged off (Konnect's DestroySession)."""
        if not self.per_user or self.sessions is None or identity.backend != PROVIDER:
            return
        deadline = _Deadline(self.deadline)
        sid = await deadline.wait(self.sessions.take(identity.raw_sub))
        if sid:
            await self._run(deadline, self._logoff, sid)

    async def resolve(self, username: str) -> Optional[Identity]:
        """A user an external authority vouched for, by name: as in Konnect
        (identifier/backends/kc.go `ResolveUserByUsername`) only on a global session."""
        if not username:
            return None
        if self.per_user:
            raise BackendUnavailable("kc backend: resolving a user by name (an external "
                                     "authority's sign-in) needs a global session "
                                     "(KOPANO_SERVER_USERNAME), as in Konnect")
        return await self._run(_Deadline(self.deadline), self._resolve_global, username)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.per_user:  # users' sessions are shared with other processes
                await self._run(_Deadline(self.deadline), self._drop_global, None, closing=True)
        except BackendUnavailable as err:
            log.info("kopano server: the global session was not logged off: %s", err)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._requests.close()

    def _user_sessions(self) -> UserSessions:
        if self.sessions is None or self._mint is None:
            raise BackendUnavailable("kc backend: per-user sessions need the store (not bound)")
        return self.sessions

    async def _find(self, raw_sub: str, entry_id: Optional[str]) -> Optional[Identity]:
        exid = _exid_of(raw_sub) if isinstance(raw_sub, str) else None
        if exid is None:
            return None
        deadline = _Deadline(self.deadline)
        if not self.per_user:
            return await self._run(deadline, self._lookup_global, exid)
        sessions = self._user_sessions()
        if abeid_exid(_b64decode(entry_id)) != exid:
            entry_id = base64.b64encode(make_abeid(exid)).decode("ascii")
        sid = await deadline.wait(sessions.get(raw_sub))
        identity, new_sid = await self._run(deadline, self._lookup_user, exid, entry_id, sid)
        if new_sid:
            try:
                await deadline.wait(sessions.put(raw_sub, new_sid))
            except BackendUnavailable:
                self._forget(new_sid)
                raise
        return identity

    def _forget(self, sid: int) -> None:
        """Log off a session nobody will find (its store write failed), in the background."""
        if not self._closed:
            self._executor.submit(self._in_worker, _Deadline(self.deadline), self._logoff, sid)

    async def _run(self, deadline: _Deadline, fn: Callable, *args: Any,
                   closing: bool = False) -> Any:
        """`fn(*args)` in the pool, answered within `deadline` or BackendUnavailable."""
        if self._closed and not closing:
            raise BackendUnavailable("kc backend is closed")
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._in_worker, deadline, fn, *args)
        try:
            return await asyncio.wait_for(future, max(deadline.remaining(), 0.001))
        except asyncio.TimeoutError:
            deadline.abort()  # frees the worker: its connection is shut down
            log.warning("kopano server %s: %s got no answer within %g s", self.uri,
                        fn.__name__.strip("_"), deadline.seconds)
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

    def _authenticate(self, username: str, password: str) -> Any:
        """Global session: the identity or None. Per-user: (identity, the user's session
        id) or None; the session is kept (the caller stores it) unless the logon fails."""
        flags = LOGON_NO_UID_AUTH | (0 if self.per_user else LOGON_NO_REGISTER_SESSION)
        result = self._logon(username, password, flags)
        if result.er in (KCERR_LOGON_FAILED, KCERR_NO_ACCESS, KCERR_NOT_FOUND):
            return None
        self._check(result.er, "logon")
        sid = result.ulSessionId or 0
        keep = False
        try:
            if self.per_user and not sid:
                raise BackendUnavailable("kopano server logon returned no session")
            resolved = self._on_session(sid, "resolveUsername", lpszUsername=username)
            if resolved.er in _NOT_THERE:
                return None
            self._check(resolved.er, "resolveUsername")
            found = self._on_session(sid, "getUser", sUserId=resolved.sUserId)
            if found.er in _NOT_THERE:
                return None
            self._check(found.er, "getUser")
            identity = self._identity(found.lpsUser, abeid_exid(resolved.sUserId), username)
            if not self.per_user:
                return identity
            keep = True
            return identity, sid
        finally:
            if sid and not keep:
                self._logoff(sid)

    def _resolve_global(self, username: str) -> Optional[Identity]:
        """resolveUsername and getUser on the global session (no user password)."""
        resolved = self._on_session(0, "resolveUsername", lpszUsername=username)
        if resolved.er in _NOT_THERE:
            return None
        self._check(resolved.er, "resolveUsername")
        found = self._on_session(0, "getUser", sUserId=resolved.sUserId)
        return self._found(found, abeid_exid(resolved.sUserId))

    def _lookup_global(self, exid: bytes) -> Optional[Identity]:
        found = self._on_session(0, "getUser", sUserId=make_abeid(exid))
        return self._found(found, exid)

    def _lookup_user(self, exid: bytes, entry_id: str, sid: int) -> tuple:
        """(identity or None, a new session id to store or 0): getUser on the user's own
        session; without one, or after the server ended it, on a new single sign-on session."""
        new_sid = 0
        for _ in range(2):
            if not sid:
                sid = new_sid = self._sso_logon(entry_id)
                if not sid:
                    return None, 0
            found = self._call("getUser", ulSessionId=sid, sUserId=base64.b64decode(entry_id))
            if found.er != KCERR_END_OF_SESSION:
                return self._found(found, exid), new_sid
            if new_sid:
                break
            sid = 0
        raise BackendUnavailable("kopano server ended a new single sign-on session at once")

    def _found(self, found: Any, exid: bytes) -> Optional[Identity]:
        if found.er in _NOT_THERE:
            return None
        self._check(found.er, "getUser")
        user = found.lpsUser
        if user is None or user.ulIsNonActive:
            return None
        return self._identity(user, exid, "")

    def _sso_logon(self, entry_id: str) -> int:
        """A new session of the user `entry_id` by single sign-on (KCOIDC), or 0 when the
        server refuses it (the user is gone, or it does not trust this issuer)."""
        token = self._mint(entry_id)
        result = self._call("ssoLogon", szUsername=entry_id, lpInput=SSO_KCOIDC + token.encode(),
                            szImpersonateUser="", clientCaps=CAPABILITIES,
                            szClientApp=CLIENT_APP[0], szClientAppVersion=CLIENT_APP[1],
                            clientVersion=CLIENT_VERSION, ulSessionId=0)
        if result.er == 0 and result.ulSessionId:
            return result.ulSessionId
        if result.er in (KCERR_LOGON_FAILED, KCERR_NO_ACCESS, KCERR_NOT_FOUND):
            log.warning("kopano server refused the single sign-on (KCOIDC) of a user: the user "
                        "is disabled or gone, or the server does not trust this issuer "
                        "(server.cfg: enable_sso = yes, kcoidc_issuer_identifier)")
            return 0
        self._check(result.er or 0, "ssoLogon")
        raise BackendUnavailable("kopano server ssoLogon returned no session")

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
        """One SOAP request; whatever goes wrong is BackendUnavailable (never a 500). A 200
        answer that is not SOAP (zeep's AttributeError on a missing root, IndexError on an
        empty Body) and an answer without an integer `er` (zeep, non-strict, reads
        `<er>garbage</er>` or a missing `er` as None, which read as "success" and then as
        "user gone") are the server failing, not an answer (every Kopano operation
        answers `er`)."""
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


def _b64decode(value: Optional[str]) -> Optional[bytes]:
    try:
        return base64.b64decode(value, validate=True) if value else None
    except (binascii.Error, ValueError):
        return None
