"""Docker for the container tests (tests/deploy/): a daemon, a base image made from Debian's
packages, the images built from a clean copy of the repository, and a compose project.

The daemon is the one already running (DOCKER_HOST or /var/run/docker.sock) or one started
here, as root, and stopped again by `Daemon.stop`. A daemon started here keeps its images
and build cache in `KONNECT_DOCKER_ROOT` (default ~/.cache/konnect-py/docker), so a second
run reuses the base image and the pip layer; its sockets live in a temporary directory. It
runs with no default bridge, no iptables rules, no IP forwarding and no masquerading: the
containers reach each other on the networks a test creates and the host's loopback through
published ports, and nothing beyond. Only image builds use the host's network
(`docker build --network host`), to reach the package registries.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "konnect-base:bookworm"
BASE_MAX_AGE = 7 * 24 * 3600  # rebuilt weekly: the security updates of the packages
DAEMON_FLAGS = ("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false")


def cache_root() -> Path:
    return Path(os.environ.get("KONNECT_DOCKER_ROOT")
                or Path.home() / ".cache" / "konnect-py" / "docker")


def unavailable() -> Optional[str]:
    """Why Docker cannot run here, or None. deploy/install-deps.sh installs the packages
    (as root); only where that was impossible are the tests skipped."""
    missing = [tool for tool in ("dockerd", "docker", "debootstrap")
               if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()]
    if missing:
        return (f"Docker cannot run on this machine: {', '.join(missing)} not installed "
                "(deploy/install-deps.sh installs docker.io, docker-compose and debootstrap as root)")
    if os.geteuid() != 0 and not Daemon(Path(tempfile.gettempdir()))._answers(dict(os.environ)):
        return "Docker cannot run on this machine: no daemon runs, and starting dockerd needs root"
    return None


class Daemon:
    """The Docker daemon of a test run: `start()`, `docker(...)`, `stop()`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DOCKER_", "COMPOSE_", "BUILDKIT"))}
        self.process: Optional[subprocess.Popen] = None
        self._lock = None
        self.data_root: Optional[Path] = None
        self.log: Optional[Path] = None

    # -- life cycle ---------------------------------------------------------------------

    def _answers(self, env: dict) -> bool:
        try:
            return subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                  env=env, capture_output=True, timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, timeout: float = 90.0) -> "Daemon":
        running = dict(self.env, **{k: v for k, v in os.environ.items() if k == "DOCKER_HOST"})
        if self._answers(running):  # a daemon of the machine's own: use it, leave it running
            self.env = running
            return self
        # Our own daemon. Its sockets in a short temporary path (unix socket paths are short).
        run_dir = Path(tempfile.mkdtemp(prefix="konnect-dockerd-", dir="/tmp"))
        self.run_dir = run_dir
        self.data_root = cache_root()
        self.data_root.mkdir(parents=True, exist_ok=True)
        lock = open(self.data_root.parent / (self.data_root.name + ".lock"), "w")
        try:  # another run holds the cache: this one starts from an empty data root
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock = lock
        except BlockingIOError:
            lock.close()
            self.data_root = run_dir / "data"
        self.log = self.workdir / "dockerd.log"
        socket = f"unix://{run_dir}/docker.sock"
        out = open(self.log, "ab")
        self.process = subprocess.Popen(
            ["dockerd", f"--data-root={self.data_root}", f"--exec-root={run_dir}/exec",
             f"--pidfile={run_dir}/dockerd.pid", f"--host={socket}", *DAEMON_FLAGS],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        out.close()
        self.env = dict(self.env, DOCKER_HOST=socket)
        deadline = time.monotonic() + timeout
        while not self._answers(self.env):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    @property
    def own(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop a daemon started here (its containers with it) and wait until it is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # the cache keeps no failed build's containers, and no untagged image older than
            # the base image's week (a multi-stage build's first stage is untagged: younger
            # ones are the pip layer the next build reuses)
            self.docker("container", "prune", "--force", check=False)
            self.docker("image", "prune", "--force", "--filter", f"until={BASE_MAX_AGE}s",
                        check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # dockerd's containerd is in its session: nothing of it may outlive the daemon
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # dockerd can leave its namespace mounts (exec-root/netns/default) behind
        with open("/proc/self/mounts") as mounts:
            inside = [line.split()[1] for line in mounts
                      if line.split()[1].startswith(f"{self.run_dir}/")]
        for mountpoint in sorted(inside, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- commands -----------------------------------------------------------------------

    def docker(self, *args: str, timeout: float = 120, check: bool = True,
               input: Optional[str] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {result.returncode}\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def inspect(self, *names: str) -> list[dict]:
        return json.loads(self.docker("inspect", *names).stdout)

    def image_age(self, image: str) -> Optional[float]:
        """Seconds since the image was made, or None when there is none."""
        found = self.docker("image", "inspect", "--format", "{{.Created}}", image, check=False)
        if found.returncode != 0:
            return None
        created = found.stdout.strip()
        return time.time() - calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))

    def base_image(self) -> str:
        """The Debian bookworm base of every image: made with debootstrap from Debian's
        packages (deploy/images/debian-base.sh) unless this daemon has a recent one."""
        age = self.image_age(BASE_IMAGE)
        if age is None or age > BASE_MAX_AGE:
            result = subprocess.run([str(ROOT / "deploy" / "images" / "debian-base.sh"), BASE_IMAGE],
                                    env=self.env, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-3000:]
        return BASE_IMAGE

    def image_size(self, image: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", image).stdout)


def clean_tree(dest: Path) -> Path:
    """The repository as a fresh clone has it (tracked and new files, nothing ignored: no
    .venv, .state, caches), plus the host's extra certificate authorities in
    deploy/build-ca/ (a TLS-inspecting proxy between this host and PyPI)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if not source.exists():  # deleted in the work tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(ca, dest / "deploy" / "build-ca" / ca.name)
    return dest


def compose_command(env: dict) -> list[str]:
    """`docker compose` (Compose v2) where the plugin is installed, else Debian's
    docker-compose 1.29; the compose files work with both."""
    plugin = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor docker-compose"
    return ["docker-compose"]


class Compose:
    """One compose project of the shipped files, run from a clean tree."""

    def __init__(self, daemon: Daemon, tree: Path, project: str, files: Sequence[str],
                 env: dict) -> None:
        self.daemon, self.tree, self.project = daemon, tree, project
        self.files = [str(tree / "deploy" / f) for f in files]
        self.env = dict(daemon.env, **env)
        self.command = compose_command(self.env)

    def __call__(self, *args: str, timeout: float = 300, check: bool = True,
                 input: Optional[str] = None) -> subprocess.CompletedProcess:
        cmd = [*self.command, "--project-name", self.project,
               *(a for f in self.files for a in ("-f", f)), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input, cwd=self.tree / "deploy")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[:2])} {' '.join(args)}: exit "
                                 f"{result.returncode}\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-4000:]}")
        return result

    def config(self) -> dict:
        return yaml.safe_load(self("config").stdout)

    def build(self) -> list[str]:
        """Every image the files build, as their `build:` sections say, with the host's
        network for the package registries (`docker build --network host`)."""
        built: dict[str, dict] = {}
        for name, service in sorted(self.config()["services"].items()):
            if "build" in service:
                built.setdefault(service["image"], service["build"])
        for image, build in built.items():
            args = [a for k, v in sorted((build.get("args") or {}).items())
                    for a in ("--build-arg", f"{k}={v}")]
            context = Path(build["context"])
            self.daemon.docker("build", "--network", "host", "--quiet", "--tag", image,
                               "--file", str(context / build.get("dockerfile", "Dockerfile")),
                               *args, str(context), timeout=1200)
        return sorted(built)

    def containers(self, service: Optional[str] = None, *, all: bool = False) -> list[str]:
        """Container names of the project (of one service), running ones unless `all`."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        out = self.daemon.docker("ps", *(["--all"] if all else []), *filters,
                                 "--format", "{{.Names}}").stdout
        return sorted(out.split())

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "200", check=False).stdout
