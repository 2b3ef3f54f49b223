"""Real redis-server and slapd processes for the tests, in a temporary directory.

Each server runs in the foreground as a child of the test process, on 127.0.0.1 and a
unix socket, and is ready when it answers (PING, LDAP whoami): polled with a short
back-off and a deadline, never a fixed sleep. Neither program can take a bound socket
from us, so a port is picked free and the start is retried on another port if the
server exits because the port was taken meanwhile. Children are always terminated.
"""

from __future__ import annotations

import atexit
import contextlib
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import ldap3
import redis
from ldap3.core.exceptions import LDAPException, LDAPNoSuchObjectResult
from ldap3.utils.dn import escape_rdn, parse_dn
from redis.backoff import NoBackoff
from redis.retry import Retry

STARTUP_TIMEOUT = 15.0
START_ATTEMPTS = 5
# AF_UNIX paths are limited to 108 bytes on Linux (including the NUL).
_MAX_SOCKET_PATH = 100

_running: "weakref.WeakSet[_ServerProcess]" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort: a server whose owner never stopped it dies with the test process."""
    for server in list(_running):
        server.stop()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before: the
    kernel may give the same free port to two binds in a row, and a group's services, its
    proxy and its Redis must not be given one port twice (the second to start would fail
    to listen)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free loopback port that was not handed out already")


def _find(name: str, hint: str, executable: str | None = None) -> str:
    """The program's path; /usr/sbin is searched too (often missing from non-root PATHs)."""
    if executable:
        exe = shutil.which(executable)
    else:
        exe = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if not exe:
        raise ServerNotFound(f"{name} not found: {hint}")
    return exe


def ssha(password: str) -> str:
    """An OpenLDAP {SSHA} userPassword value (salted SHA-1, RFC 2307 style)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


class ServerNotFound(RuntimeError):
    """The server program is not installed; the message says which package to install."""


class ServerStartError(RuntimeError):
    """The server did not become ready; the message carries the tail of its log."""


class _ServerProcess:
    """Start/stop/readiness shared by both servers. Subclasses define the command line,
    the readiness probe and how a lost port race shows in the log."""

    name = "server"

    def __init__(self, directory: Path, *, ports: Iterable[int] = (),
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._candidates = list(ports)  # tried first (tests of the retry)
        self._proc: subprocess.Popen | None = None
        self._short_dir: str | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server; a restart reuses the first start's port and socket."""
        if self.running:
            return
        if self.port is not None:
            try:
                self._launch(self.port)
            except _PortTaken as err:
                raise ServerStartError(f"{self.name}: port {self.port} was taken while the "
                                       f"server was stopped:\n{err}") from None
            return
        last = ""
        for _ in range(START_ATTEMPTS):
            port = self._candidates.pop(0) if self._candidates else free_port()
            try:
                self._launch(port)
            except _PortTaken as err:
                self.port, last = None, str(err)
                continue
            except BaseException:
                self.port = None
                raise
            return
        raise ServerStartError(f"{self.name}: no free port after {START_ATTEMPTS} attempts:\n"
                               f"{last}")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
                proc.terminate()
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        else:
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- for subclasses --------------------------------------------------------------------

    def _socket_dir(self) -> Path:
        """A directory for unix sockets whose paths stay under the AF_UNIX limit."""
        if len(str(self.dir)) + 16 <= _MAX_SOCKET_PATH:
            return self.dir
        if self._short_dir is None:
            self._short_dir = tempfile.mkdtemp(prefix=f"{self.name[:5]}-")
        return Path(self._short_dir)

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """One readiness check; True when the server answers. Must not raise."""
        raise NotImplementedError

    def _before_launch(self) -> None:
        pass

    # -- internals -------------------------------------------------------------------------

    def _launch(self, port: int) -> None:
        self._before_launch()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self._command(port), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.dir)
        self._proc, self.port = proc, port
        _running.add(self)
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        try:
            while True:
                if proc.poll() is not None:
                    text = self._log_since(offset)
                    self._proc = None
                    _running.discard(self)
                    if "Address already in use" in text:
                        raise _PortTaken(text)
                    raise ServerStartError(f"{self.name} exited with status {proc.returncode}:"
                                           f"\n{text}")
                if self._probe():
                    return
                if time.monotonic() > deadline:
                    raise ServerStartError(f"{self.name} not ready after "
                                           f"{self.startup_timeout} s:\n{self._log_since(offset)}")
                time.sleep(delay)
                delay = min(delay * 1.5, 0.05)
        except BaseException:
            self.stop()
            raise

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""


class _PortTaken(Exception):
    pass


class RedisServer(_ServerProcess):
    """A throwaway redis-server: no persistence, TCP on 127.0.0.1 plus a unix socket."""

    name = "redis"

    def __init__(self, directory: Path, *, executable: str | None = None, **kw) -> None:
        self.executable = _find("redis-server", "apt-get install redis-server", executable)
        super().__init__(directory, **kw)
        self.socket_path = self._socket_dir() / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def client(self, **kw) -> redis.Redis:
        """A synchronous client (TCP, db 0) without retries; the caller closes it."""
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 5)
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def _command(self, port: int) -> list[str]:
        return [self.executable, "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--dir", str(self.dir), "--logfile", str(self.log_path),
                "--protected-mode", "yes"]

    def _probe(self) -> bool:
        # First the unix socket, which only our process can have created: redis binds TCP
        # before it, so an answer there means the TCP port is ours as well. Then TCP, to
        # be sure that what answers on the port is this very process.
        unix = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=0.5,
                           socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            if not unix.ping():
                return False
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            # ResponseError: LOADING while the dataset loads
            return False
        finally:
            unix.close()
        tcp = self.client(socket_timeout=2, socket_connect_timeout=2)
        try:
            pid = tcp.info("server")["process_id"]
        finally:
            tcp.close()
        if pid != self._proc.pid:
            raise ServerStartError(f"port {self.port} answers for redis pid {pid}, "
                                   f"not ours ({self._proc.pid})")
        return True


class SlapdServer(_ServerProcess):
    """A throwaway OpenLDAP slapd: generated slapd.conf (mdb), base tree loaded with slapadd,
    TCP on 127.0.0.1 plus ldapi://. Tests add their own entries with `add_ou`/`add_user`."""

    name = "slapd"
    SCHEMAS = ("core", "cosine", "nis", "inetorgperson")

    def __init__(self, directory: Path, *, base_dn: str = "dc=example,dc=test",
                 admin_password: str = "admin-secret", schema_dir: str = "/etc/ldap/schema",
                 module_dir: str = "/usr/lib/ldap", executable: str | None = None,
                 slapadd: str | None = None, **kw) -> None:
        hint = "apt-get install slapd ldap-utils"
        self.executable = _find("slapd", hint, executable)
        self.slapadd = _find("slapadd", hint, slapadd)
        super().__init__(directory, **kw)
        self.base_dn = base_dn
        self.admin_dn = f"cn=admin,{base_dn}"
        self.admin_password = admin_password
        self.people_dn = f"ou=people,{base_dn}"
        self.schema_dir = Path(schema_dir)
        self.module_dir = module_dir
        self.conf_path = self.dir / "slapd.conf"
        self.data_dir = self.dir / "data"
        self.socket_path = self._socket_dir() / "ldapi"
        self._initialised = False

    @property
    def url(self) -> str:
        # no trailing slash: ldap3.Server refuses "ldap://host:port/"
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + quote(str(self.socket_path), safe="")

    # -- set-up ----------------------------------------------------------------------------

    def _before_launch(self) -> None:
        if not self._initialised:
            self._write_config()
            self._load_base()
            self._initialised = True
        # a socket file left by a killed slapd would make the ldapi listener fail
        self.socket_path.unlink(missing_ok=True)

    def _write_config(self) -> None:
        for schema in self.SCHEMAS:
            if not (self.schema_dir / f"{schema}.schema").exists():
                raise ServerStartError(f"{self.schema_dir}/{schema}.schema missing: "
                                       "apt-get install slapd")
        self.data_dir.mkdir(exist_ok=True)
        includes = "".join(f"include {self.schema_dir}/{s}.schema\n" for s in self.SCHEMAS)
        self.conf_path.write_text(
            f"{includes}"
            f"pidfile {self.dir}/slapd.pid\n"
            f"argsfile {self.dir}/slapd.args\n"
            f"modulepath {self.module_dir}\n"
            "moduleload back_mdb\n"
            "\n"
            "database mdb\n"
            "maxsize 67108864\n"
            f'suffix "{self.base_dn}"\n'
            f'rootdn "{self.admin_dn}"\n'
            f"rootpw {ssha(self.admin_password)}\n"
            f"directory {self.data_dir}\n"
            "index objectClass,uid,mail,entryUUID eq\n"
            # passwords: usable for binding, readable by nobody but their owner
            "access to attrs=userPassword by self write by anonymous auth by * none\n"
            "access to * by users read by anonymous auth by * none\n"
        )

    def _load_base(self) -> None:
        top = parse_dn(self.base_dn)[0]
        ldif = (f"dn: {self.base_dn}\nobjectClass: dcObject\nobjectClass: organization\n"
                f"{top[0]}: {top[1]}\no: {top[1]}\n\n"
                f"dn: {self.people_dn}\nobjectClass: organizationalUnit\nou: people\n\n")
        ldif_path = self.dir / "base.ldif"
        ldif_path.write_text(ldif)
        result = subprocess.run([self.slapadd, "-q", "-f", str(self.conf_path),
                                 "-l", str(ldif_path)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise ServerStartError(f"slapadd failed ({result.returncode}):\n"
                                   f"{result.stdout}{result.stderr}")

    def _command(self, port: int) -> list[str]:
        # Any -d keeps slapd in the foreground; level "none" prints only the messages that
        # are always logged (start, stop, "bind(...) failed errno=98"), and no debug output.
        return [self.executable, "-f", str(self.conf_path),
                "-h", f"ldap://127.0.0.1:{port}/ {self.ldapi_url}", "-d", "none"]

    def _probe(self) -> bool:
        # ldapi:// first: the socket is ours alone, and slapd opens every listener before it
        # serves any, so an answer there means the TCP port is ours too. Then whoami on TCP.
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket_path))
        except OSError:
            return False
        for ldapi in (True, False):
            try:
                conn = self.connect(ldapi=ldapi)
            except LDAPException:
                return False
            try:
                if not conn.extend.standard.who_am_i():
                    return False
            except LDAPException:
                return False
            finally:
                conn.unbind()
        return True

    # -- LDAP helpers ----------------------------------------------------------------------

    def server(self, *, ldapi: bool = False) -> ldap3.Server:
        return ldap3.Server(self.ldapi_url if ldapi else self.url, get_info=ldap3.NONE,
                            connect_timeout=5)

    def connect(self, user: str | None = None, password: str | None = None, *,
                ldapi: bool = False) -> ldap3.Connection:
        """A bound connection (as the admin unless `user` is given); the caller unbinds it.

        Raises an ldap3 exception if the bind fails."""
        if user is None:
            user, password = self.admin_dn, self.admin_password
        conn = ldap3.Connection(self.server(ldapi=ldapi), user=user, password=password,
                                receive_timeout=10, raise_exceptions=True)
        try:
            conn.bind()
        except BaseException:
            # ldap3 2.9.1 leaves the socket of a failed connect open: close it ourselves
            sock = conn.socket
            try:
                conn.unbind()
            finally:
                if sock is not None:
                    sock.close()
            raise
        return conn

    def add_ou(self, name: str, parent: str | None = None) -> str:
        """Create ``ou=<name>`` under `parent` (default: the base DN) and return its DN."""
        dn = f"ou={escape_rdn(name)},{parent or self.base_dn}"
        conn = self.connect()
        try:
            conn.add(dn, ["organizationalUnit"], {"ou": name})
        finally:
            conn.unbind()
        return dn

    def add_user(self, ou_dn: str, uid: str, password: str, given: str, sn: str,
                 mail: str | None = None, extra_attrs: dict | None = None) -> str:
        """Create an inetOrgPerson ``uid=<uid>,<ou_dn>`` with an {SSHA} password; its DN."""
        dn = f"uid={escape_rdn(uid)},{ou_dn}"
        attrs = {"uid": uid, "cn": f"{given} {sn}", "givenName": given, "sn": sn,
                 "mail": mail or f"{uid}@example.test", "userPassword": ssha(password)}
        attrs.update(extra_attrs or {})
        conn = self.connect()
        try:
            conn.add(dn, ["inetOrgPerson"], attrs)
        finally:
            conn.unbind()
        return dn

    def modify_entry(self, dn: str, **values) -> None:
        """Replace attribute values of `dn` (as the admin): `modify_entry(dn, cn="New")`."""
        conn = self.connect()
        try:
            conn.modify(dn, {name: [(ldap3.MODIFY_REPLACE, [value])]
                             for name, value in values.items()})
        finally:
            conn.unbind()

    @contextlib.contextmanager
    def temporary_ou(self, name: str) -> Iterator[str]:
        """An ou under the base DN for the duration of the block, then deleted with its
        entries (a leftover of the same name is removed first)."""
        dn = f"ou={escape_rdn(name)},{self.base_dn}"
        self.delete_tree(dn)
        self.add_ou(name)
        try:
            yield dn
        finally:
            self.delete_tree(dn)

    def delete_tree(self, dn: str) -> None:
        """Delete `dn` and everything below it; a missing entry is not an error."""
        conn = self.connect()
        try:
            try:
                conn.search(dn, "(objectClass=*)", search_scope=ldap3.SUBTREE, attributes=[])
            except LDAPNoSuchObjectResult:
                return
            dns = sorted((e.entry_dn for e in conn.entries),
                         key=lambda d: len(parse_dn(d)), reverse=True)
            for entry in dns:
                conn.delete(entry)
        finally:
            conn.unbind()
