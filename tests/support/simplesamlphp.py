"""SimpleSAMLphp (Debian's `simplesamlphp`, under a test-owned Apache with mod_php on a free
loopback port) as the SAML2 identity provider, as in Konnect's own example.

Everything lives in a directory of the test's own (readable by Apache's `www-data`
children, which run PHP): config.php, authsources.php (exampleauth:UserPass users), the
IdP's signing key and certificate, the hosted IdP and our SP in flat-file metadata.
The IdP signs its assertions (`saml20.sign.assertion`), takes unsigned AuthnRequests (as
Konnect's SP sends), releases attributes in the basic name format and offers single logout
by HTTP-Redirect. With `sign_metadata` it signs its metadata too (`metadata.sign.enable`),
with a key of its own (cert/metadata.key, .crt).

For metadata an attacker would serve: `Documents` (a loopback HTTP server of the test's
own) and `sign_metadata_document` (xmlsec1 signs a changed copy with a given key, as the
IdP would have).
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
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
                 user: str = "www-data", assertion_lifetime: int = 300,
                 sign_metadata: bool = False) -> None:
        self.assertion_lifetime = assertion_lifetime
        self.sign_metadata = sign_metadata
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
        self_signed(d / "cert", "metadata")
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
               "NameIDFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
               # its metadata signed with a key of its own (not the assertions' key)
               "metadata.sign.enable": self.sign_metadata,
               "metadata.sign.privatekey": "metadata.key",
               "metadata.sign.certificate": "metadata.crt"}
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
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
SIGNATURE = re.compile(r"<ds:Signature\b.*?</ds:Signature>", re.S)
_TEMPLATE = """<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>\
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>\
<ds:SignatureMethod Algorithm="{method}"/><ds:Reference URI="#{id}"><ds:Transforms>\
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>\
<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>\
<ds:DigestMethod Algorithm="{digest}"/><ds:DigestValue/></ds:Reference></ds:SignedInfo>\
<ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>"""


def unsigned(xml: str) -> str:
    """The document without its XML declaration and signatures."""
    return SIGNATURE.sub("", xml.split("?>", 1)[1] if xml.startswith("<?xml") else xml).strip()


def sign_metadata_document(xml: str, key: Path, cert: Path, *, sha1: bool = False) -> bytes:
    """`xml` (unsigned, its root an EntityDescriptor or EntitiesDescriptor with an ID)
    signed by xmlsec1 with `key`, the signature the root's first child, as SimpleSAMLphp
    places it; RSA-SHA256 (or RSA-SHA1 with SHA-1 digests)."""
    start = re.search(r"<md:(EntityDescriptor|EntitiesDescriptor)\b[^>]*>", xml)
    root_id = re.search(r'\bID="([^"]+)"', start.group(0)).group(1)
    template = _TEMPLATE.format(
        id=root_id,
        method="http://www.w3.org/2000/09/xmldsig#rsa-sha1" if sha1
        else "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest="http://www.w3.org/2000/09/xmldsig#sha1" if sha1
        else "http://www.w3.org/2001/04/xmlenc#sha256")
    document = xml[:start.end()] + template + xml[start.end():]
    with tempfile.TemporaryDirectory(prefix="konnect-sign-") as tmp:
        source, out = Path(tmp) / "in.xml", Path(tmp) / "out.xml"
        source.write_text(document)
        subprocess.run(["xmlsec1", "--sign", "--privkey-pem", f"{key},{cert}",
                        "--id-attr:ID", f"{MD}:{start.group(1)}", "--output", str(out),
                        str(source)], check=True, capture_output=True, timeout=30)
        return out.read_bytes()


class Documents:
    """A loopback HTTP server of the test's own: `url(name)` serves `documents[name]` as
    SAML metadata (what a man in the middle or a broken web server would send)."""

    def __init__(self) -> None:
        self.documents: dict = {}
        documents = self.documents

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                body = documents.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/samlmetadata+xml")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = "http://127.0.0.1:%d/" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return self.base + name

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def saml_site(base: Path, *, lifetime: int = 300, default: bool = False,
              metadata_file: bool = False, signed_metadata: bool = False):
    """SimpleSAMLphp (users alice and mallory, uid attributes; assertions living `lifetime`
    seconds) and the OP under test (`down`, local user alice, clock skew 1 s) with it as
    the authority `idp` (trusted, end_session_enabled; `default` as asked; the IdP's
    metadata from a file the operator keeps with `metadata_file`; with `signed_metadata`
    the IdP signs it and the entry names its certificate)."""
    from .upstream import write_state
    down = Group(base / "down", extra_env={"KONNECTD_CLOCK_SKEW": "1"})
    idp = SimpleSAMLphp(users={"alice": ("alice-idp-pw", {"uid": ["alice"]}),
                               "mallory": ("mallory-idp-pw", {"uid": ["mallory"]})},
                        sp_entity_id=down.issuer + "/signin/v1/identifier/saml2/metadata",
                        acs=down.issuer + ACS,
                        slo=down.issuer + "/signin/v1/identifier/_/saml2/slo",
                        assertion_lifetime=lifetime, sign_metadata=signed_metadata)
    idp.start()
    try:
        metadata = idp.metadata_url
        if metadata_file:
            kept = base / "idp-metadata.xml"
            kept.write_bytes(requests.get(idp.metadata_url, timeout=10).content)
            metadata = f"file://{kept}"
        entry = {"id": "idp", "name": "SimpleSAMLphp", "authority_type": "saml2",
                 "discover": True, "trusted": True, "insecure": True,
                 "metadata_endpoint": metadata, "identity_claim_name": "uid",
                 "end_session_enabled": True, "default": default}
        if signed_metadata:
            kept = base / "idp-metadata-signing.crt"
            shutil.copy(idp.dir / "cert" / "metadata.crt", kept)
            entry["metadata_signing_certificates"] = [str(kept)]
        write_state(down, users={"alice": "alice-local-pw"}, clients=[], authorities=[entry])
        down.start()
        try:
            yield {"down": down, "idp": idp}
        finally:
            down.stop()
    finally:
        idp.stop()
