"""Redis deployments that fail over, for the tests and the failover suite: a primary with
replicas watched by Sentinels (`SentinelGroup`), and a Redis Cluster (`ClusterGroup`).

Real redis-server and redis-sentinel processes from Debian's packages, on 127.0.0.1 and free
ports, each in a directory of its own (tests/support/servers.py does the start, readiness
and stop of each process). The groups provoke the failovers an operator meets and wait,
polling with a deadline, until the deployment has settled again:

- `SentinelGroup.failover()`: SENTINEL FAILOVER (a planned switch);
- `SentinelGroup.kill_primary()`: kill -9 of the primary; the Sentinels promote a replica;
  the killed server is started again (as its supervisor would) and becomes a replica;
- `SentinelGroup.pause_primary()`: CLIENT PAUSE ALL on the primary for longer than the
  Sentinels wait: they promote a replica while the old primary is alive, and it resumes
  as a primary that others no longer follow (a "zombie" primary) until the Sentinels
  reconfigure it;
- `ClusterGroup.kill_master()`: kill -9 of a cluster primary; its replica takes over; the
  killed node is started again and rejoins as a replica.

Every server has `min-replicas-to-write` (all the replicas of its shard): a primary that
lost a replica refuses writes instead of accepting what a failover would drop.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import (RedisServer, ServerStartError, _find, free_port,
                                   _ServerProcess)

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000       # a Sentinel's verdict "down" (subjectively) after this silence
FAILOVER_TIMEOUT_MS = 3000
CLUSTER_NODE_TIMEOUT_MS = 1000
SETTLE_TIMEOUT = 60.0
_BUS_PORTS: dict[int, int] = {}


def _client(port: int, **kw) -> redis.Redis:
    kw.setdefault("socket_timeout", 2)
    kw.setdefault("socket_connect_timeout", 2)
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0),
                       decode_responses=True, **kw)


def wait_for(what: str, check: Callable[[], object], timeout: float = SETTLE_TIMEOUT,
             interval: float = 0.05) -> object:
    """Poll `check` until it returns something true; errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (redis.RedisError, OSError) as err:
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s (last: {last!r})")
        time.sleep(interval)


class RedisNode(RedisServer):
    """A redis-server with options of its own (replication, cluster mode, persistence)."""

    def __init__(self, directory: Path, *, options: tuple = (),
                 options_for: Optional[Callable[[int], list]] = None, **kw) -> None:
        super().__init__(directory, **kw)
        self.options, self.options_for = list(options), options_for

    def _command(self, port: int) -> list[str]:
        extra = self.options + (self.options_for(port) if self.options_for else [])
        return super()._command(port) + extra

    def kill(self) -> None:
        """kill -9: no shutdown, no save, sockets gone at once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def client(self, **kw) -> redis.Redis:
        return super().client(**kw)

    def info(self, section: str = "replication") -> dict:
        with _client(self.port) as c:
            return c.info(section)


class SentinelServer(_ServerProcess):
    """A redis-sentinel watching one primary; it rewrites its own configuration file."""

    name = "sentinel"

    def __init__(self, directory: Path, primary_port: int, *, quorum: int = 2,
                 service: str = SERVICE, executable: Optional[str] = None, **kw) -> None:
        self.executable = _find("redis-sentinel", "apt-get install redis-sentinel", executable)
        super().__init__(directory, **kw)
        self.primary_port, self.quorum, self.service = primary_port, quorum, service
        self.conf = self.dir / "sentinel.conf"
        self._written = False

    def _before_launch(self) -> None:
        if not self._written:  # later starts keep what the Sentinel wrote itself
            s = self.service
            self.conf.write_text(
                f"sentinel monitor {s} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {s} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {s} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {s} 2\n")
            self._written = True

    def _command(self, port: int) -> list[str]:
        return [self.executable, str(self.conf), "--port", str(port), "--bind", "127.0.0.1",
                "--daemonize", "no", "--logfile", str(self.log_path), "--dir", str(self.dir),
                "--protected-mode", "no"]

    def _probe(self) -> bool:
        try:
            with _client(self.port, socket_timeout=0.5, socket_connect_timeout=0.5) as c:
                pid = c.info("server")["process_id"]
        except (redis.RedisError, OSError):
            return False
        if pid != self._proc.pid:
            raise ServerStartError(f"port {self.port} answers for pid {pid}, not ours")
        return True

    def client(self) -> redis.Redis:
        return _client(self.port)

    def master_port(self) -> int:
        with self.client() as c:
            return int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])


class _Group:
    """Start (everything or nothing), stop, and the URL of a deployment of several servers."""

    scheme = ""

    def _servers(self) -> list:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _url_path(self) -> str:
        return ""

    def _url_hosts(self) -> list:
        raise NotImplementedError

    def url(self, **params: str) -> str:
        """The `--redis-url` of this deployment, with our query parameters."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self._url_hosts())
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.scheme}://{hosts}{self._url_path()}" + (f"?{query}" if query else "")

    def start(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in self._servers():
            server.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class SentinelGroup(_Group):
    """One primary, `replicas` replicas and `sentinels` Sentinels on loopback."""

    scheme = "redis+sentinel"

    def __init__(self, directory: Path, *, replicas: int = 2, sentinels: int = 3,
                 service: str = SERVICE, min_replicas: Optional[int] = None,
                 persistence: bool = False) -> None:
        self.dir = Path(directory)
        self.service = service
        self.replica_count = replicas
        self.min_replicas = replicas if min_replicas is None else min_replicas
        options = ["--min-replicas-to-write", str(self.min_replicas),
                   "--min-replicas-max-lag", "10", "--repl-diskless-sync", "yes",
                   "--repl-diskless-sync-delay", "0", "--replica-announce-ip", "127.0.0.1"]
        if persistence:
            options += ["--appendonly", "yes", "--appendfsync", "always"]
        self.nodes = [RedisNode(self.dir / f"redis-{i}", options=tuple(options))
                      for i in range(1 + replicas)]
        self.sentinels: list[SentinelServer] = []
        self._sentinel_count = sentinels

    # -- facts ----------------------------------------------------------------------------

    def _url_hosts(self) -> list:
        return [s.port for s in self.sentinels]

    def _url_path(self) -> str:
        return "/" + self.service

    def node(self, port: int) -> RedisNode:
        (node,) = [n for n in self.nodes if n.port == port]
        return node

    def primary(self) -> RedisNode:
        return self.node(self.sentinels[0].master_port())

    # -- life cycle -----------------------------------------------------------------------

    def _start(self) -> None:
        primary = self.nodes[0]
        primary.start()
        for node in self.nodes[1:]:
            node.options_for = lambda port, p=primary.port: ["--replicaof", "127.0.0.1", str(p)]
            node.start()
            node.options_for = None  # a restart comes back as a primary; Sentinel fixes it
        for i in range(self._sentinel_count):
            sentinel = SentinelServer(self.dir / f"sentinel-{i}", primary.port,
                                      service=self.service)
            self.sentinels.append(sentinel)
            sentinel.start()
        self.settle()

    def _servers(self) -> list:
        return [*self.sentinels, *self.nodes]

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> RedisNode:
        """Wait until every Sentinel names the same primary, it is one, every other server
        replicates it with its link up, and the Sentinels know all replicas and each other.
        Returns the primary."""
        def settled() -> Optional[RedisNode]:
            ports = {s.master_port() for s in self.sentinels}
            if len(ports) != 1:
                return None
            primary = self.node(ports.pop())
            info = primary.info()
            if info["role"] != "master" or info["connected_slaves"] != self.replica_count:
                return None
            for node in self.nodes:
                if node is primary:
                    continue
                r = node.info()
                if r["role"] != "slave" or int(r["master_port"]) != primary.port \
                        or r["master_link_status"] != "up":
                    return None
            for s in self.sentinels:
                with s.client() as c:
                    known = c.execute_command("SENTINEL", "REPLICAS", self.service)
                    peers = c.execute_command("SENTINEL", "SENTINELS", self.service)
                if len(known) != self.replica_count or len(peers) != len(self.sentinels) - 1:
                    return None
                if any("s_down" in _flags(r) or "disconnected" in _flags(r) for r in known):
                    return None
            return primary
        return wait_for("the Sentinel group to settle", settled, timeout)

    # -- failovers --------------------------------------------------------------------------

    def failover(self) -> tuple[int, int]:
        """SENTINEL FAILOVER; returns (old, new) primary ports once settled again."""
        old = self.primary().port
        with self.sentinels[0].client() as c:
            wait_for("SENTINEL FAILOVER accepted",
                     lambda: c.execute_command("SENTINEL", "FAILOVER", self.service))
        new = self._switched(old)
        return old, new

    def kill_primary(self, down_for: float = 0.0) -> tuple[int, int]:
        """kill -9 of the primary; it is started again (empty: no persistence) once a
        replica was promoted, after `down_for` seconds more."""
        victim = self.primary()
        old = victim.port
        victim.kill()
        new = wait_for("a replica promoted", lambda: self._promoted(old))
        time.sleep(down_for)
        victim.start()
        self.settle()
        return old, new

    def pause_primary(self, seconds: float = 3.0) -> tuple[int, int]:
        """CLIENT PAUSE ALL on the primary for `seconds` (longer than the Sentinels wait):
        a replica is promoted while the old primary lives, paused."""
        old = self.primary()
        with old.client() as c:
            c.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        new = self._switched(old.port)
        return old.port, new

    def _promoted(self, old: int) -> Optional[int]:
        ports = {s.master_port() for s in self.sentinels}
        if len(ports) == 1 and old not in ports:
            port = ports.pop()
            return port if self.node(port).info()["role"] == "master" else None
        return None

    def _switched(self, old: int) -> int:
        new = wait_for("a new primary", lambda: self._promoted(old))
        self.settle()
        return new


def _flags(entry) -> set:
    if isinstance(entry, dict):
        return set(str(entry.get("flags", "")).split(","))
    values = dict(zip(entry[::2], entry[1::2]))
    return set(str(values.get("flags", "")).split(","))


class ClusterGroup(_Group):
    """A Redis Cluster of `masters` primaries with `replicas` replicas each, made with
    `redis-cli --cluster create`."""

    scheme = "redis+cluster"

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 1,
                 min_replicas: Optional[int] = None) -> None:
        self.dir = Path(directory)
        self.masters, self.replicas = masters, replicas
        self.min_replicas = replicas if min_replicas is None else min_replicas
        self.cli = _find("redis-cli", "apt-get install redis-tools")
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout",
                   str(CLUSTER_NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
                   "--min-replicas-to-write", str(self.min_replicas),
                   "--min-replicas-max-lag", "10", "--cluster-replica-validity-factor", "0",
                   "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                   "--cluster-announce-ip", "127.0.0.1")
        self.nodes = [RedisNode(self.dir / f"node-{i}", options=options,
                                options_for=self._cluster_options)
                      for i in range(masters * (1 + replicas))]

    def _url_hosts(self) -> list:
        return [n.port for n in self.nodes]

    @staticmethod
    def _cluster_options(port: int) -> list:
        """Its own cluster bus port (not port + 10000, which may be out of range or taken),
        kept across restarts in the node's configuration file's name."""
        bus = _BUS_PORTS.setdefault(port, free_port())
        return ["--cluster-config-file", f"nodes-{port}.conf", "--cluster-port", str(bus)]

    def _servers(self) -> list:
        return self.nodes

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        result = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed:\n{result.stdout}"
                                   f"{result.stderr}")
        self.settle()

    def primaries(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.running and n.info()["role"] == "master"]

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Every node up and sees the cluster ok, `masters` primaries with all slots, each
        with its replicas' links up."""
        def settled() -> bool:
            primaries = []
            for node in self.nodes:
                with node.client(decode_responses=True) as c:
                    text = c.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in text:
                    return False
                info = node.info()
                if info["role"] == "master":
                    primaries.append(node)
                elif info["master_link_status"] != "up":
                    return False
            if len(primaries) != self.masters:
                return False
            for node in primaries:
                if node.info()["connected_slaves"] != self.replicas:
                    return False
            with self.nodes[0].client(decode_responses=True) as c:
                slots = c.execute_command("CLUSTER", "SLOTS")
                covered = sum(int(e[1]) - int(e[0]) + 1 for e in slots)
                return covered == 16384 and all(len(e) - 2 == 1 + self.replicas for e in slots)
        wait_for("the cluster to settle", settled, timeout)

    def kill_master(self, index: int = 0, down_for: float = 0.0) -> tuple[int, int]:
        """kill -9 of a primary; once its replica took over, the node is started again
        (it rejoins as a replica). Returns (killed port, new primary port)."""
        victim = self.primaries()[index % self.masters]
        with victim.client(decode_responses=True) as c:
            my_id = c.execute_command("CLUSTER", "MYID")
            replicas = [n for n in self.nodes if n is not victim and n.running
                        and n.info()["role"] == "slave"
                        and int(n.info()["master_port"]) == victim.port]
        victim.kill()

        def promoted() -> Optional[int]:
            for node in replicas:
                if node.info()["role"] == "master":
                    return node.port
            return None
        new = wait_for("a replica promoted", promoted)
        del my_id
        time.sleep(down_for)
        victim.start()
        self.settle()
        return victim.port, new
