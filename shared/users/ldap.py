"""The `ldap` backend (`identifier-ldap`, Konnect's identifier/backends/ldap.go): search, then
bind as the user.

Logon:
  1. on a pooled connection bound as the service account (`LDAP_BINDDN`; anonymous when
     empty), search `(&<LDAP_FILTER>(<login attribute>=<username>))` under `LDAP_BASEDN`
     with `LDAP_SCOPE` and a size limit of 2: no entry is a failed logon, two are an error
     (logged, and a failed logon);
  2. the entry's login attribute must equal the username, case-insensitively, both in
     Unicode NFC (the username is normalised to NFC first, as in the users file);
  3. on a connection of its own, bind as the entry's DN with the password:
     invalidCredentials (49) is a failed logon, and so are the refusals 48, 50 and 53
     (logged). That connection is closed at once: user binds never touch the pool.

The raw subject is the entry DN, or with `LDAP_SUB_ATTRIBUTES` the URL query encoding of
those attributes (`uid=alice`), as Go's `url.Values.Encode` writes it: names sorted, every
value. `lookup` reads the entry again (DN: a base-scope search on the DN with
`LDAP_FILTER`; attributes: an `&` of `LDAP_FILTER` and one equality per pair) and accepts
it only if it gives back the same raw subject. Attribute names are matched
case-insensitively and only their first value is used. `LDAP_UUID_ATTRIBUTE_TYPE`: `text`
is the value itself, `binary` its standard base64 (as Konnect), `uuid` the canonical UUID
string of 16 raw bytes (e.g. objectGUID, read big-endian like Konnect) or of a textual
UUID; anything else gives no uuid. A `LDAP_UIDNUMBER_ATTRIBUTE` value that is not an
integer makes the entry unusable; an entry without the attribute signs in without a
numeric id (both as Konnect's identifier/backends/ldap.go, where the id is then 0).

Subjects from the DN or from a renamable attribute (`uid`, `mail`...) are reused when a
name is: rename `uid=carol` and create a new `uid=carol`, and the newcomer gets the first
carol's subject, and with it her accounts at every relying party (Konnect alike). The
backend warns at start-up unless `LDAP_SUB_ATTRIBUTES` names only an immutable entry
identifier (`entryUUID`, `objectGUID`, ... `IMMUTABLE_IDS`); docs/operations.md.

Where this differs from Konnect, on purpose:
  * every value put into a filter is escaped (RFC 4515 §3: `*`, `(`, `)`, `\\`, NUL) with
    ldap3's `escape_filter_chars`; Konnect pastes usernames and subject values in raw;
  * attribute names in a subject must be configured sub attributes (never taken from it);
  * an empty password is refused before any bind: RFC 4513 §5.1.2 makes it an
    unauthenticated bind, which many servers answer with success; for the same reason a
    `LDAP_BINDDN` without `LDAP_BINDPW` is a configuration error;
  * a username or password that cannot be sent (ldap3 refuses it locally: SASLprep's
    prohibited characters such as controls, unpaired surrogates, more than
    `MAX_USERNAME`/`MAX_PASSWORD` characters) is a failed logon, never an outage;
  * a DN subject must lie under `LDAP_BASEDN`;
  * an unreachable, hung or misconfigured directory (refused service bind included)
    raises `BackendUnavailable` (503) and is logged, instead of looking like bad
    credentials or a 500;
  * service connections are pooled (Konnect opens a connection per operation).

Connections and deadlines. The work runs in a bounded thread pool (`workers` threads), so
the event loop never waits on the directory. Searches run on long-lived connections bound
once as the service account, kept in a pool (the one used last is used next; a new one is
opened only when all are in use, so never more than `workers` per process) and replaced
when they fail: an operation that fails on a reused connection (the server closed it while
idle, restarted, a network blip) is retried once on a fresh one. A connection is
dropped after any failure other than an LDAP result, so a late answer can never be read as
the answer to the next request. Every operation (a logon: search plus user bind; a lookup)
has ONE deadline of `timeout` seconds from the moment it is asked for, whatever the number
of round trips inside it and including the wait for a free thread: every connect and
every socket read gets the time left, and the caller gets `BackendUnavailable` when it
passes ("all connections busy" when the operation never got a thread). Sockets are always
closed, including the one ldap3 2.9.1 leaves open after a failed connect. `ldaps://`
verifies the certificate and host name unless `--insecure`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import ssl
import threading
import unicodedata
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import unquote_plus, unquote_to_bytes, urlencode, urlsplit

import ldap3
from ldap3.core.exceptions import (LDAPException, LDAPInvalidDNSyntaxResult, LDAPInvalidDnError,
                                   LDAPInvalidFilterError, LDAPNoSuchObjectResult,
                                   LDAPOperationResult)
from ldap3.operation.search import parse_filter
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from ..config import url_port_problem
from ..identity import Identity
from . import BackendConfigError
from .base import MAX_PASSWORD, MAX_USERNAME, BackendUnavailable, Deadline, UserBackend

log = logging.getLogger("konnect.users.ldap")
PROVIDER = "identifier-ldap"
SCOPES = {"sub": ldap3.SUBTREE, "one": ldap3.LEVEL, "base": ldap3.BASE}
UUID_TYPES = ("text", "binary", "uuid")
INVALID_CREDENTIALS = 49
# the server answered the user's bind with a refusal (inappropriateAuthentication,
# insufficientAccessRights, unwillingToPerform): a failed logon, not an outage
REFUSED = {48, 50, 53}
# Entry identifiers a server assigns once and never changes or reuses (RFC 4530
# entryUUID: OpenLDAP, 389-ds, ApacheDS; objectGUID: Active Directory, Samba; nsUniqueId:
# 389-ds; ipaUniqueID: FreeIPA; GUID: eDirectory; orclGUID: Oracle): subjects made of
# them cannot pass from one person to another.
IMMUTABLE_IDS = frozenset({"entryuuid", "objectguid", "nsuniqueid", "ipauniqueid", "guid",
                           "orclguid", "ibm-entryuuid"})

Entry = tuple[str, dict[str, list[bytes]]]  # DN, lower-cased attribute name -> raw values


@dataclass(frozen=True)
class Attributes:
    """Which LDAP attribute holds what (`LDAP_*_ATTRIBUTE`); empty means not used."""

    login: str = "uid"
    email: str = "mail"
    name: str = "cn"
    family_name: str = "sn"
    given_name: str = "givenName"
    uuid: str = "uuid"
    uuid_type: str = "text"
    uidnumber: str = ""
    sub: tuple[str, ...] = ()

    def requested(self) -> list[str]:
        names = [self.login, self.email, self.name, self.family_name, self.given_name,
                 self.uuid, self.uidnumber, *self.sub]
        return list({n.lower(): n for n in names if n}.values())


class _Tls(ldap3.Tls):
    """ldap3's TLS with the standard library's certificate and host name checks."""

    def __init__(self, context: ssl.SSLContext, hostname: str) -> None:
        super().__init__(validate=context.verify_mode)
        self._context, self._hostname = context, hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket, server_hostname=self._hostname,
            do_handshake_on_connect=do_handshake)


def _close(conn: ldap3.Connection) -> None:
    sock = conn.socket  # unbind does not close the socket of a failed connect (ldap3 2.9.1)
    try:
        conn.unbind()
    except (LDAPException, OSError):
        pass
    finally:
        if sock is not None:
            sock.close()


def _first(entry: Entry, name: str) -> Optional[bytes]:
    values = entry[1].get(name.lower()) if name else None
    return values[0] if values else None


def _text(entry: Entry, name: str) -> str:
    value = _first(entry, name)
    return value.decode("utf-8", "replace") if value is not None else ""


def _uuid(value: Optional[bytes], kind: str) -> str:
    if value is None:
        return ""
    if kind == "binary":
        return base64.b64encode(value).decode("ascii")
    if kind == "uuid":
        try:
            parsed = uuidlib.UUID(bytes=value) if len(value) == 16 else uuidlib.UUID(value.decode())
        except (ValueError, UnicodeDecodeError):
            return ""
        return str(parsed)
    return value.decode("utf-8", "replace")


#: Go's int64, as Konnect parses LDAP_UIDNUMBER_ATTRIBUTE; also what orjson can encode
INT64 = range(-2 ** 63, 2 ** 63)


def _filter_value(value: bytes) -> str:
    """An assertion value for a filter (RFC 4515 §3): UTF-8 text with its metacharacters
    escaped, or, when the value is not UTF-8 (objectGUID-like octet strings), every octet
    as `\\xx`, which RFC 4515 allows for any octet."""
    try:
        return escape_filter_chars(value.decode("utf-8"))
    except UnicodeDecodeError:
        return "".join(f"\\{octet:02x}" for octet in value)


def _dn_key(dn: str) -> list[tuple[str, str]]:
    return [(attr.lower(), value.lower()) for attr, value, _ in parse_dn(dn, strip=True)]


class LDAPBackend(UserBackend):
    manager = "ldap"
    provider = PROVIDER

    def __init__(self, uri: str, basedn: str, *, binddn: str = "", bindpw: str = "",
                 scope: str = "sub", user_filter: str = "(objectClass=inetOrgPerson)",
                 attributes: Attributes = Attributes(), timeout: int = 10,
                 insecure: bool = False, ca_file: Optional[str] = None,
                 workers: int = 8) -> None:
        """`ca_file` adds a CA bundle for ldaps:// (no option yet; Konnect: LDAP_TLS_CACERT)."""
        parts = urlsplit(uri if "://" in uri else "ldap://" + uri)
        problems = []
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            problems.append(f"ldap_uri has value {uri!r}: must be ldap://host or ldaps://host")
        elif (why := url_port_problem(parts.geturl())):
            problems.append(f"ldap_uri has value {uri!r}: {why}")
        if not basedn:
            problems.append("ldap_basedn is required")
        if bool(bindpw) != bool(binddn):  # a DN without password: an unauthenticated bind
            problems.append("ldap_binddn and ldap_bindpw must be set together (or neither)")
        if scope not in SCOPES:
            problems.append(f"ldap_scope has value {scope!r}: must be sub, one or base")
        if attributes.uuid_type not in UUID_TYPES:
            problems.append(f"ldap_uuid_attribute_type has value {attributes.uuid_type!r}")
        if not attributes.login:
            problems.append("ldap_login_attribute must not be empty")
        user_filter = (user_filter or "(objectClass=inetOrgPerson)").strip()
        if not user_filter.startswith("("):
            user_filter = f"({user_filter})"
        try:
            parse_filter(f"(&{user_filter}(objectClass=*))", None, False, True, None, False)
        except LDAPInvalidFilterError:
            problems.append(f"ldap_filter has value {user_filter!r}: not an LDAP filter")
        if problems:
            raise BackendConfigError("; ".join(problems))
        self.host = parts.hostname
        self.port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        self.tls: Optional[_Tls] = None
        if parts.scheme == "ldaps":
            context = ssl.create_default_context(cafile=ca_file)
            if insecure:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.tls = _Tls(context, self.host)
        self.basedn, self.binddn, self.bindpw = basedn, binddn, bindpw
        self.scope, self.filter, self.attributes = SCOPES[scope], user_filter, attributes
        self.timeout = timeout
        self.workers = workers
        self._sub_names = {name.lower(): name for name in attributes.sub}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ldap")
        self._pooled: set[ldap3.Connection] = set()   # service connections, idle or in use
        self._idle: list[ldap3.Connection] = []       # LIFO: the warmest first
        self._pool_lock = threading.Lock()
        self._closed = False
        log.info("ldap backend: %s://%s:%d base %s", parts.scheme, self.host, self.port, basedn)
        _warn_if_subjects_are_reusable(attributes.sub)

    @classmethod
    def from_settings(cls, settings: Any) -> "LDAPBackend":
        attributes = Attributes(
            login=settings.ldap_login_attribute, email=settings.ldap_email_attribute,
            name=settings.ldap_name_attribute, family_name=settings.ldap_family_name_attribute,
            given_name=settings.ldap_given_name_attribute, uuid=settings.ldap_uuid_attribute,
            uuid_type=settings.ldap_uuid_attribute_type,
            uidnumber=settings.ldap_uidnumber_attribute or "",
            sub=tuple(settings.ldap_sub_attributes or ()))
        return cls(settings.ldap_uri or "", settings.ldap_basedn or "",
                   binddn=settings.ldap_binddn or "", bindpw=settings.ldap_bindpw or "",
                   scope=settings.ldap_scope, user_filter=settings.ldap_filter,
                   attributes=attributes, timeout=settings.ldap_timeout,
                   insecure=bool(getattr(settings, "insecure", False)))

    # -- the async interface ----------------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        if not username or not password:  # "" would be an unauthenticated bind (RFC 4513)
            return None
        # NFC, as the users file: a decomposed `josé` is the same user (and the login
        # attribute check below compares NFC forms; the server's RFC 4518 prep does too)
        username = unicodedata.normalize("NFC", username)
        if not _sendable(username, password):
            return None
        return await self._call(self._authenticate, username, password)

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        if not raw_sub:
            return None
        return await self._call(self._lookup, raw_sub)

    async def resolve(self, username: str) -> Optional[Identity]:
        if not username:
            return None
        username = unicodedata.normalize("NFC", username)
        if not _sendable(username, "-"):  # what an upstream sent is untrusted input too
            return None
        entry = await self._call(self._find, username)
        return None if entry is None else self._identity(entry)

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._pool_lock:
            pooled, self._pooled, self._idle = list(self._pooled), set(), []
        for conn in pooled:  # a thread still using one fails and drops it
            _close(conn)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(deadline, *args)` in the thread pool, answered within `timeout` seconds
        from now: the wait for a thread counts."""
        deadline = Deadline(self.timeout, "ldap")
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._run,
                                                            deadline, fn, *args)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            what = fn.__name__.strip("_")
            if deadline.started:
                log.warning("ldap %s: no answer within %d s", what, self.timeout)
            else:
                log.warning("ldap %s: all %d connections busy for %d s", what, self.workers,
                            self.timeout)
            raise BackendUnavailable("ldap: no answer in time") from None

    def _run(self, deadline: Deadline, fn: Callable[..., Any], *args: Any) -> Any:
        if deadline.remaining() <= 0:  # waited its whole time for a thread: do nothing
            log.warning("ldap %s: all %d connections busy for %d s", fn.__name__.strip("_"),
                        self.workers, self.timeout)
            raise BackendUnavailable("ldap: no answer in time")
        deadline.started = True
        return fn(deadline, *args)

    # -- in the thread pool -----------------------------------------------------------------

    def _authenticate(self, deadline: Deadline, username: str,
                      password: str) -> Optional[Identity]:
        entry = self._find(deadline, username)
        if entry is None:
            return None
        identity = self._identity(entry)
        if identity is None or not self._password_ok(deadline, entry[0], password):
            return None
        return identity

    def _find(self, deadline: Deadline, username: str) -> Optional[Any]:
        """The one entry whose login attribute is `username`, or None."""
        login = self.attributes.login
        search = f"(&{self.filter}({login}={escape_filter_chars(username)}))"
        entries = self._on_service(deadline, lambda conn: self._search(
            conn, self.basedn, self.scope, search, missing_base=True))
        if len(entries) != 1:
            if entries:
                log.error("ldap logon refused: %d entries match %s=%r; the login attribute "
                          "must be unique", len(entries), login, username)
            return None
        entry = entries[0]
        if unicodedata.normalize("NFC", _text(entry, login)).casefold() != username.casefold():
            log.warning("ldap logon refused: %s of %s does not equal %r", login, entry[0],
                        username)
            return None
        return entry

    def _lookup(self, deadline: Deadline, raw_sub: str) -> Optional[Identity]:
        if self._sub_names:
            search = self._sub_filter(raw_sub)
            if search is None:
                return None
            base, scope = self.basedn, self.scope
        else:
            try:
                base_key = _dn_key(self.basedn)
                if _dn_key(raw_sub)[-len(base_key):] != base_key:
                    return None  # not (or no longer) under LDAP_BASEDN
            except LDAPInvalidDnError:
                return None
            base, scope, search = raw_sub, ldap3.BASE, self.filter
        entries = self._on_service(deadline, lambda conn: self._search(
            conn, base, scope, search, missing_base=base == self.basedn))
        if len(entries) != 1:
            return None
        identity = self._identity(entries[0])
        return identity if identity is not None and identity.raw_sub == raw_sub else None

    def _sub_filter(self, raw_sub: str) -> Optional[str]:
        """The filter for a sub-attributes subject; values are read back as the octets
        `_raw_sub` percent-encoded (not as UTF-8 text)."""
        pairs = []
        for part in raw_sub.split("&"):
            name, eq, value = part.partition("=")
            if not eq or not name:
                return None
            try:
                pairs.append((unquote_plus(name, errors="strict"),
                              unquote_to_bytes(value.replace("+", " "))))
            except (UnicodeError, ValueError):
                return None
        if not pairs or any(name.lower() not in self._sub_names for name, _ in pairs):
            return None  # attribute names come from the configuration only
        terms = "".join(f"({self._sub_names[name.lower()]}={_filter_value(value)})"
                        for name, value in pairs)
        return f"(&{self.filter}{terms})"

    def _raw_sub(self, entry: Entry) -> str:
        """The entry DN, or the sub attributes as Go's `url.Values.Encode` writes them
        (Konnect's identifier/backends/ldap.go, for LDAP_SUB_ATTRIBUTES): Go strings are
        octets, so every octet of a value is percent-encoded as it is. Decoding a binary
        value (objectGUID) as UTF-8 with replacement first turned every invalid octet into
        U+FFFD: different users could share one subject, and the subject could never be
        looked up again. UTF-8 values encode exactly as before."""
        if not self._sub_names:
            return entry[0]
        pairs = [(name, bytes(value))
                 for name in sorted(self._sub_names.values())
                 for value in entry[1].get(name.lower(), [])]
        return urlencode(pairs)

    def _identity(self, entry: Entry) -> Optional[Identity]:
        attrs, dn = self.attributes, entry[0]
        raw_sub = self._raw_sub(entry)
        if not raw_sub:
            log.warning("ldap entry %s has none of the sub attributes %s", dn, ", ".join(attrs.sub))
            return None
        numeric_id = None
        if attrs.uidnumber and _first(entry, attrs.uidnumber) is not None:
            # Konnect's identifier/backends/ldap.go: an entry without the attribute signs
            # in with id 0 (no `id` claim); a value that does not parse as Go's int64
            # makes the record invalid (a longer one raised ValueError past 4300 digits,
            # a 500, or made the `id` claim one orjson cannot encode, a 500 later)
            number = _text(entry, attrs.uidnumber)
            if not re.fullmatch(r"-?[0-9]{1,19}", number) or int(number) not in INT64:
                log.warning("ldap entry %s: %s is not a 64-bit number", dn, attrs.uidnumber)
                return None
            numeric_id = int(number)
        return Identity(raw_sub=raw_sub, backend=PROVIDER, username=_text(entry, attrs.login),
                        name=_text(entry, attrs.name), given_name=_text(entry, attrs.given_name),
                        family_name=_text(entry, attrs.family_name),
                        email=_text(entry, attrs.email), email_verified=False,
                        numeric_id=numeric_id,
                        uuid=_uuid(_first(entry, attrs.uuid), attrs.uuid_type))

    # -- connections ------------------------------------------------------------------------

    def _open(self, user: Optional[str], password: Optional[str],
              deadline: Deadline) -> ldap3.Connection:
        """A connection bound as `user` (anonymous if None) within the deadline; the caller
        closes it. ldap3 failures propagate."""
        left = deadline.check()
        server = ldap3.Server(self.host, port=self.port, use_ssl=self.tls is not None,
                              tls=self.tls, get_info=ldap3.NONE,
                              connect_timeout=min(self.timeout, left))
        # ldap3 sets the receive timeout with struct.pack("LL"): whole seconds
        conn = ldap3.Connection(server, user=user, password=password,
                                authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                                client_strategy=ldap3.SYNC,
                                receive_timeout=max(1, math.ceil(min(self.timeout, left))),
                                read_only=True, auto_referrals=False, raise_exceptions=True)
        try:
            conn.open()
            _arm(conn, deadline, self.timeout)
            conn.bind()
        except BaseException:
            _close(conn)
            raise
        return conn

    def _acquire(self, deadline: Deadline) -> tuple[ldap3.Connection, bool]:
        """An idle service connection (the one used last), else a new one bound as the
        service account; (connection, reused). Each worker thread holds at most one, so
        there are never more than `workers`."""
        with self._pool_lock:
            if self._idle:
                return self._idle.pop(), True
        try:
            conn = self._open(self.binddn or None, self.bindpw or None, deadline)
        except LDAPOperationResult as err:
            log.error("ldap service bind as %r refused (%s): check LDAP_BINDDN and "
                      "LDAP_BINDPW", self.binddn, err.description)
            raise BackendUnavailable("ldap: service bind refused") from None
        with self._pool_lock:
            if not self._closed:
                self._pooled.add(conn)
                return conn, False
        _close(conn)
        raise BackendUnavailable("ldap: backend closed")

    def _release(self, conn: ldap3.Connection) -> None:
        with self._pool_lock:
            if conn in self._pooled and not conn.closed:
                self._idle.append(conn)
                return
            self._pooled.discard(conn)
        _close(conn)

    def _discard(self, conn: ldap3.Connection) -> None:
        with self._pool_lock:
            self._pooled.discard(conn)
        _close(conn)

    def _on_service(self, deadline: Deadline, operation: Callable[[ldap3.Connection], Any]) -> Any:
        """`operation(connection)` on a pooled service connection. A failure other than an
        LDAP result drops the connection; on a reused connection the operation is tried
        once more on a fresh one (a server that closed an idle connection, or restarted,
        is no outage). Any remaining failure is `BackendUnavailable` (logged)."""
        for attempt in (1, 2):
            try:
                conn, reused = self._acquire(deadline)
            except (LDAPException, OSError) as err:
                log.warning("ldap %s:%d unavailable: %s", self.host, self.port, err)
                raise BackendUnavailable(f"ldap: {type(err).__name__}") from None
            try:
                _arm(conn, deadline, self.timeout)
                result = operation(conn)
            except (LDAPOperationResult, BackendUnavailable) as err:
                self._release(conn)  # the server answered: the connection is fine
                if isinstance(err, BackendUnavailable):
                    raise
                log.warning("ldap %s:%d unavailable: %s", self.host, self.port, err)
                raise BackendUnavailable(f"ldap: {type(err).__name__}") from None
            except (LDAPException, OSError) as err:
                self._discard(conn)
                if deadline.remaining() <= 0:  # the socket timed out at the deadline
                    log.warning("ldap search: no answer within %d s", self.timeout)
                    raise BackendUnavailable("ldap: no answer in time") from None
                if attempt == 1 and reused:
                    log.info("ldap %s:%d: pooled connection failed (%s), reconnecting",
                             self.host, self.port, type(err).__name__)
                    continue
                log.warning("ldap %s:%d unavailable: %s", self.host, self.port, err)
                raise BackendUnavailable(f"ldap: {type(err).__name__}") from None
            except BaseException:
                self._discard(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def _search(self, conn: ldap3.Connection, base: str, scope: str, search: str, *,
                missing_base: bool) -> list[Entry]:
        """Matching entries (at most 2). A missing `base` means no entry, or is an error
        when it is the configured base DN (`missing_base`)."""
        try:
            conn.search(base, search, search_scope=scope, attributes=self.attributes.requested(),
                        size_limit=2, time_limit=self.timeout,
                        dereference_aliases=ldap3.DEREF_NEVER)
        except (LDAPNoSuchObjectResult, LDAPInvalidDNSyntaxResult):
            if missing_base:
                log.error("ldap base DN %r does not exist: check LDAP_BASEDN", base)
                raise BackendUnavailable("ldap: base DN missing") from None
            return []
        return [(r["dn"], {name.lower(): list(values)
                           for name, values in r["raw_attributes"].items()})
                for r in conn.response or () if r.get("type") == "searchResEntry"]

    def _password_ok(self, deadline: Deadline, dn: str, password: str) -> bool:
        """Bind as `dn` on a connection of its own, closed at once."""
        try:
            conn = self._open(dn, password, deadline)
        except LDAPOperationResult as err:
            if err.result == INVALID_CREDENTIALS:
                return False
            if err.result not in REFUSED:
                log.warning("ldap %s:%d unavailable: %s", self.host, self.port, err)
                raise BackendUnavailable(f"ldap: {type(err).__name__}") from None
            log.warning("ldap bind as %s refused: %s", dn, err.description)
            return False
        except (LDAPException, OSError) as err:
            log.warning("ldap %s:%d unavailable: %s", self.host, self.port, err)
            raise BackendUnavailable(f"ldap: {type(err).__name__}") from None
        _close(conn)
        return True


def _arm(conn: ldap3.Connection, deadline: Deadline, timeout: float) -> None:
    """The next round trip on `conn` may take what is left of the deadline, at most
    `timeout` (socket.settimeout bounds connect, send and every recv)."""
    sock = conn.socket
    if sock is not None:
        sock.settimeout(deadline.socket_timeout(timeout))


def _sendable(username: str, password: str) -> bool:
    """Whether ldap3 can put the username into a filter and send the password in a simple
    bind. ldap3 prepares passwords with SASLprep (RFC 4013; RFC 4511 §4.2 recommends it)
    and refuses what it prohibits (control characters, private use, non-characters...),
    and text that is not valid Unicode (unpaired surrogates) cannot be encoded. Such input
    is a wrong password, never an outage; nothing of it is logged."""
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return False
    try:
        username.encode("utf-8")
        validate_simple_password(password)
    except (LDAPException, ValueError, TypeError):  # UnicodeError is a ValueError
        log.info("ldap logon refused: the username or password cannot be sent to the directory")
        return False
    return True


def _warn_if_subjects_are_reusable(sub_attributes: tuple[str, ...]) -> None:
    names = [name for name in sub_attributes if name.lower() not in IMMUTABLE_IDS]
    if sub_attributes and not names:
        return
    source = "the entry DN" if not sub_attributes else "attribute(s) " + ", ".join(names)
    log.warning("ldap subjects come from %s, which can be renamed and then given to someone "
                "else: a new user with a freed name would inherit the old user's subject and "
                "accounts at every relying party. New deployments should set "
                "LDAP_SUB_ATTRIBUTES=entryUUID (OpenLDAP, 389-ds) or objectGUID (Active "
                "Directory); an existing one keeps its subjects only as it is "
                "(docs/operations.md, 'LDAP subjects')", source)
