"""SimpleSAMLphp (Debian's `simplesamlphp`, under a test-owned Apache with mod_php on a free
loopback port) as the SAML2 identity provider, as in Konnect's own example.

Everything lives in a directory of the test's own (readable by Apache's `www-data`
children, which run PHP): config.php, authsources.php (exampleauth:UserPass users), the
IdP's signing key and certificate, the hosted IdP and our SP in flat-file metadata.
The IdP signs its assertions (`saml20.sign.assertion`), takes unsigned AuthnRequests (as
Konnect's SP sends), releases attributes in the basic name format and offers single logout
by HTTP-Redirect.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import requests

from .group import Group, free_port

WWW = "/usr/share/simplesamlphp/www"
MODULES = "/usr/lib/apache2/modules"


def _php(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "[" + ", ".join(f"{_php(k)} => {_php(v)}" for k, v in value.items()) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_php(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class SimpleSAMLphp:
    """`users`: username -> (password, attributes). `sp`: our SP's entity ID, ACS and SLO."""

    def __init__(self, *, users: dict, sp_entity_id: str, acs: str, slo: str,
                 user: str = "www-data", assertion_lifetime: int = 300) -> None:
        self.assertion_lifetime = assertion_lifetime
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/simplesaml/"
        self.metadata_url = self.base + "saml2/idp/metadata.php"
        self.users, self.sp = users, {"entity_id": sp_entity_id, "acs": acs, "slo": slo}
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="konnect-simplesamlphp-"))
        self.process: Optional[subprocess.Popen] = None

    @property
    def log(self) -> str:
        out = []
        for name in ("error.log", "log/simplesamlphp.log"):
            try:
                out.append((self.dir / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def write(self) -> None:
        d = self.dir
        for sub in ("config", "metadata", "cert", "log", "tmp", "sessions", "data", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self_signed(d / "cert", "idp")
        config = {
            "baseurlpath": self.base, "certdir": str(d / "cert") + "/",
            "loggingdir": str(d / "log") + "/", "datadir": str(d / "data") + "/",
            "tempdir": str(d / "tmp"), "technicalcontact_name": "Tests",
            "technicalcontact_email": "tests@example.test",
            "secretsalt": secrets.token_hex(16), "auth.adminpassword": secrets.token_hex(16),
            "admin.protectindexpage": False, "admin.protectmetadata": False,
            "timezone": "UTC", "logging.level": 7, "logging.handler": "file",
            "logging.logfile": "simplesamlphp.log", "enable.saml20-idp": True,
            "module.enable": {"exampleauth": True, "core": True, "saml": True, "admin": True},
            "store.type": "phpsession", "session.phpsession.savepath": str(d / "sessions"),
            "session.cookie.secure": False, "session.cookie.name": "IdPSession",
            "metadata.sources": [{"type": "flatfile", "directory": str(d / "metadata")}],
            "language.default": "en", "showerrors": True, "errorreporting": False,
        }
        (d / "config" / "config.php").write_text("<?php\n$config = " + _php(config) + ";\n")
        users = {f"{name}:{password}": attributes
                 for name, (password, attributes) in self.users.items()}
        (d / "config" / "authsources.php").write_text(
            "<?php\n$config = " + _php({"admin": ["core:AdminPassword"],
                                        "users": {0: "exampleauth:UserPass", **users}}) + ";\n")
        idp = {"host": "__DEFAULT__", "privatekey": "idp.key", "certificate": "idp.crt",
               "auth": "users", "saml20.sign.assertion": True, "sign.logout": True,
               "assertion.lifetime": self.assertion_lifetime, "saml20.sign.response": False,
               "attributes.NameFormat": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
               "NameIDFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"}
        (d / "metadata" / "saml20-idp-hosted.php").write_text(
            "<?php\n$metadata['__DYNAMIC:1__'] = " + _php(idp) + ";\n")
        sp = {"AssertionConsumerService": [{"Binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
                                            "Location": self.sp["acs"]}],
              "SingleLogoutService": [{"Binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
                                       "Location": self.sp["slo"]}],
              "NameIDFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
              "validate.authnrequest": False, "validate.logout": False}
        (d / "metadata" / "saml20-sp-remote.php").write_text(
            "<?php\n$metadata[" + _php(self.sp["entity_id"]) + "] = " + _php(sp) + ";\n")
        (d / "apache.conf").write_text(f"""
ServerRoot "{d}"
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile "{d}/run/httpd.pid"
Mutex file:{d}/run default
LoadModule mpm_prefork_module {MODULES}/mod_mpm_prefork.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule alias_module {MODULES}/mod_alias.so
LoadModule env_module {MODULES}/mod_env.so
LoadModule mime_module {MODULES}/mod_mime.so
LoadModule dir_module {MODULES}/mod_dir.so
LoadModule php_module {MODULES}/libphp8.2.so
User {self.user}
Group {self.user}
StartServers 2
MinSpareServers 1
MaxSpareServers 4
ErrorLog "{d}/error.log"
LogLevel warn
TypesConfig /etc/mime.types
DirectoryIndex index.php
SetEnv SIMPLESAMLPHP_CONFIG_DIR {d}/config
Alias /simplesaml {WWW}
<FilesMatch \\.php$>
    SetHandler application/x-httpd-php
</FilesMatch>
<Directory />
    Require all denied
</Directory>
<Directory {WWW}>
    Require all granted
</Directory>
""")
        uid = pwd.getpwnam(self.user)
        os.chmod(d, 0o755)
        for sub in ("log", "tmp", "sessions", "data"):
            os.chown(d / sub, uid.pw_uid, uid.pw_gid)
        for path in d.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o644)
            elif path.is_dir():
                os.chmod(path, 0o755 if path.name not in ("sessions",) else 0o700)

    def start(self, timeout: float = 30.0) -> None:
        self.write()
        out = open(self.dir / "apache.out", "ab")
        self.process = subprocess.Popen(["apache2", "-f", str(self.dir / "apache.conf"),
                                         "-DFOREGROUND"], stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"apache exited {self.process.returncode}: "
                                   f"{(self.dir / 'apache.out').read_text()}{self.log}")
            try:
                resp = requests.get(self.metadata_url, timeout=2)
                if resp.status_code == 200 and b"IDPSSODescriptor" in resp.content:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SimpleSAMLphp not ready: {self.log[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SimpleSAMLphp":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


ACS = "/signin/v1/identifier/saml2/acs"


@contextmanager
def saml_site(base: Path, *, lifetime: int = 300, default: bool = False,
              metadata_file: bool = False):
    """SimpleSAMLphp (users alice and mallory, uid attributes; assertions living `lifetime`
    seconds) and the OP under test (`down`, local user alice, clock skew 1 s) with it as
    the authority `idp` (trusted, end_session_enabled; `default` as asked; the IdP's
    metadata from a file the operator keeps with `metadata_file`)."""
    from .upstream import write_state
    down = Group(base / "down", extra_env={"KONNECTD_CLOCK_SKEW": "1"})
    idp = SimpleSAMLphp(users={"alice": ("alice-idp-pw", {"uid": ["alice"]}),
                               "mallory": ("mallory-idp-pw", {"uid": ["mallory"]})},
                        sp_entity_id=down.issuer + "/signin/v1/identifier/saml2/metadata",
                        acs=down.issuer + ACS,
                        slo=down.issuer + "/signin/v1/identifier/_/saml2/slo",
                        assertion_lifetime=lifetime)
    idp.start()
    try:
        metadata = idp.metadata_url
        if metadata_file:
            kept = base / "idp-metadata.xml"
            kept.write_bytes(requests.get(idp.metadata_url, timeout=10).content)
            metadata = f"file://{kept}"
        write_state(down, users={"alice": "alice-local-pw"}, clients=[], authorities=[{
            "id": "idp", "name": "SimpleSAMLphp", "authority_type": "saml2", "discover": True,
            "trusted": True, "insecure": True, "metadata_endpoint": metadata,
            "identity_claim_name": "uid", "end_session_enabled": True, "default": default}])
        down.start()
        try:
            yield {"down": down, "idp": idp}
        finally:
            down.stop()
    finally:
        idp.stop()
