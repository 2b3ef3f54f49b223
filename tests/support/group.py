"""The whole process group started exactly as `make run` starts it (deploy/run.py, which
execs supervisord), on free ports and a state directory of the test's own."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

import requests

from tests.support import apicheck
from tests.support.http import basic
from tests.support.op import pkce_pair
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("identifier", "authorize", "token", "userinfo")
#: the groups running now: a failed test's report ends with their logs (tests/conftest.py)
RUNNING: "weakref.WeakSet[Group]" = weakref.WeakSet()


class Group:
    def __init__(self, state: Path, *, proxy: str = "caddy", token_procs: int = 2,
                 extra_env: Optional[dict] = None, issuer_path: str = "") -> None:
        self.state, self.proxy = state, proxy
        port = free_port()
        self.origin = f"https://localhost:{port}"
        self.issuer = self.origin + issuer_path
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("KONNECTD_", "LDAP_", "KOPANO_", "KONNECT_"))}
        self.env.update({
            "KONNECT_STATE_DIR": str(state),
            "OIDC_ISSUER_IDENTIFIER": self.issuer,
            "KONNECT_PROXY": proxy,
            "KONNECT_PROXY_HTTP_PORT": str(free_port()),
            "TOKEN_PROCS": str(token_procs),
            **{f"KONNECT_{p.upper()}_LISTEN": f"127.0.0.1:{free_port()}" for p in PROGRAMS},
            "KONNECT_REDIS_LISTEN": f"127.0.0.1:{free_port()}",
            "KONNECT_DEMO_LISTEN": f"127.0.0.1:{free_port()}",
            "KONNECT_DEMO_PORT": str(free_port()),
            **(extra_env or {}),
        })
        self.process: Optional[subprocess.Popen] = None
        self.not_ready = ""
        # what starts the group: make run's own second step (the installs are done)
        self.command = [sys.executable, str(ROOT / "deploy" / "run.py")]
        self.log = state / "group.log"

    # -- facts ------------------------------------------------------------------------

    @property
    def demo(self) -> dict:
        return json.loads((self.state / "demo.json").read_text())

    @property
    def ca(self) -> str:
        if self.proxy == "apache":
            return str(self.state / "tls" / "cert.pem")
        return str(self.state / "caddy" / "data" / "pki" / "authorities" / "local" / "root.crt")

    @property
    def demo_url(self) -> str:
        """The demo app's public origin (through Caddy: https on the issuer's host)."""
        if self.proxy == "caddy":
            return f"https://localhost:{self.env['KONNECT_DEMO_PORT']}"
        return "http://" + self.env["KONNECT_DEMO_LISTEN"]

    def listen(self, program: str) -> str:
        return "http://" + self.env[f"KONNECT_{program.upper()}_LISTEN"]

    def code_flow(self, agent, **extra: str) -> dict:
        """Sign in as the demo user for the demo client (code flow with PKCE) through the
        proxy; returns the token endpoint's answer. `agent`: tests/support/agent.py."""
        demo = self.demo
        redirect_uri = self.demo_url + "/callback"
        verifier, challenge = pkce_pair()
        params = {"client_id": demo["client_id"], "redirect_uri": redirect_uri,
                  "response_type": "code", "scope": "openid profile email offline_access",
                  "state": secrets.token_hex(8), "nonce": secrets.token_hex(8),
                  "code_challenge": challenge, "code_challenge_method": "S256", **extra}
        start = f"{self.issuer}/signin/v1/identifier/_/authorize?{urlencode(params)}"
        outcome = agent.run(start, demo["username"], demo["password"], stop_outside=True)
        assert outcome.url.startswith(redirect_uri), (outcome.status, outcome.body[:300],
                                                      outcome.url)
        result = outcome.params
        assert result["state"] == params["state"] and result["iss"] == self.issuer
        resp = agent.session.post(self.issuer + "/konnect/v1/token", timeout=10, data={
            "grant_type": "authorization_code", "code": result["code"],
            "redirect_uri": redirect_uri, "code_verifier": verifier},
            headers={"Authorization": basic(demo["client_id"], demo["client_secret"])})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca
        s.hooks["response"].append(apicheck.requests_hook)
        return s

    # -- life cycle -------------------------------------------------------------------

    def launch(self) -> None:
        """Run the command (make run's), its output to `log`, without waiting for anything."""
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.process = subprocess.Popen(self.command,
                                        cwd=ROOT, env=self.env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"make run exited {self.process.returncode}:\n{self.output()}")
            if self.ready():
                return
            time.sleep(0.2)
        status = self.ctl("status")
        self.stop()
        raise RuntimeError(f"group not ready after {timeout}s ({self.not_ready}):\n{status}\n"
                           f"{self.output()[:3000]}\n...\n{self.output()[-2000:]}")

    def ready(self) -> bool:
        s = self.session()
        checks = [self.issuer + "/.well-known/openid-configuration", self.demo_url + "/",
                  *(self.listen(p) + "/health-check" for p in PROGRAMS)]
        for url in checks:
            try:
                status = s.get(url, timeout=2).status_code
            except (requests.RequestException, OSError) as err:
                status = type(err).__name__
            if status != 200:
                self.not_ready = f"{url}: {status}"
                return False
        return True

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def ctl(self, *args: str) -> str:
        """supervisorctl against this group's supervisord."""
        result = subprocess.run([str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c",
                                 str(ROOT / "deploy" / "supervisord.conf"), *args],
                                env=self.env, capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def pids(self, program: str) -> dict[str, int]:
        """process name -> pid for RUNNING processes of a program."""
        found = {}
        for line in self.ctl("status").splitlines():
            m = re.match(rf"konnect:({program}(?:_\d+)?)\s+RUNNING\s+pid (\d+)", line)
            if m:
                found[m.group(1)] = int(m.group(2))
        return found

    def wait_running(self, program: str, count: int = 1, exclude: tuple = (),
                     timeout: float = 20.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = {k: v for k, v in self.pids(program).items() if v not in exclude}
            if len(pids) >= count:
                return pids
            time.sleep(0.2)
        raise AssertionError(f"{program}: not {count} running: {self.ctl('status')}")

    def stop(self, timeout: float = 30.0) -> int:
        RUNNING.discard(self)
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise

    def __enter__(self) -> "Group":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
