"""The LDAP backend against a real slapd (shared/users/ldap.py): sign-in, lookups, subjects,
attributes, failures, TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import time
import uuid

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.config import load_settings
from shared.identity import public_subject
from shared.users import BackendConfigError, BackendUnavailable, make_backend
from shared.users.ldap import Attributes, LDAPBackend
from tests.support.servers import SlapdServer, free_port

PASSWORD = "wonder land*(pw)"


def add(server, ou, uid, password=PASSWORD, **extra):
    given, sn = uid.capitalize(), "Example"
    return server.add_user(ou, uid, password, given, sn, extra_attrs=extra or None)


@pytest.fixture
def people(slapd_server, ldap_ou):
    """alice, alfred, bob (uid 1001..1003) and carol (employeeType=disabled) in this test's ou."""
    dns = {uid: add(slapd_server, ldap_ou, uid, employeeNumber=str(1000 + n),
                    carLicense=f"uuid-{uid}")
           for n, uid in enumerate(("alice", "alfred", "bob"), start=1)}
    dns["carol"] = add(slapd_server, ldap_ou, "carol", employeeType="disabled")
    return dns


@pytest.fixture
def make(slapd_server, ldap_ou, io_loop):
    """Build backends on this test's ou, bound as the admin; closed after the test."""
    built = []

    def factory(url=None, base=None, **kw):
        kw.setdefault("binddn", slapd_server.admin_dn)
        kw.setdefault("bindpw", slapd_server.admin_password)
        kw.setdefault("timeout", 5)
        backend = LDAPBackend(url or slapd_server.url, base or ldap_ou, **kw)
        built.append(backend)
        return backend

    yield factory
    for backend in built:
        io_loop.run_sync(backend.close)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TlsSlapd(SlapdServer):
    """The test slapd plus an ldaps:// listener with a certificate for 127.0.0.1."""

    def __init__(self, directory, cert: str, key: str, **kw) -> None:
        super().__init__(directory, **kw)
        self.cert, self.key, self.tls_port = cert, key, free_port()

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        super()._write_config()
        text = self.conf_path.read_text()
        tls = f"TLSCertificateFile {self.cert}\nTLSCertificateKeyFile {self.key}\n\n"
        self.conf_path.write_text(text.replace("database mdb", tls + "database mdb", 1))

    def _command(self, port: int) -> list[str]:
        command = super()._command(port)
        at = command.index("-h") + 1
        command[at] += f" ldaps://127.0.0.1:{self.tls_port}/"
        return command


def _certificates(directory) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [directory / "ca.pem", directory / "cert.pem", directory / "key.pem"]
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


@pytest.fixture
def tls_slapd(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    with TlsSlapd(tmp_path / "slapd", cert, key) as server:
        server.ca = ca
        add(server, server.people_dn, "alice")
        yield server


LDAP_PASSWORD = "pw-4b"


@pytest.fixture
def ldap_make(slapd_server, ldap_ou):
    built = []

    def factory(**kw):
        backend = LDAPBackend(slapd_server.url, ldap_ou, binddn=slapd_server.admin_dn,
                              bindpw=slapd_server.admin_password, timeout=5, **kw)
        built.append(backend)
        return backend

    yield factory
    for backend in built:
        asyncio.run(backend.close())


def ldap_add(server, ou, uid, **extra):
    return server.add_user(ou, uid, LDAP_PASSWORD, uid.capitalize(), "Example",
                           extra_attrs=extra or None)


@pytest.mark.gen_test
async def test_logon_maps_the_entry_and_keeps_konnects_subject(make, people):
    alice = await make().authenticate("alice", PASSWORD)
    assert alice.raw_sub == people["alice"] and alice.backend == "identifier-ldap"
    assert (alice.username, alice.name, alice.given_name, alice.family_name, alice.email) == \
        ("alice", "Alice Example", "Alice", "Example", "alice@example.test")
    assert alice.email_verified is False and alice.numeric_id is None and alice.uuid == ""
    assert alice.sub == public_subject(people["alice"], "identifier-ldap")


@pytest.mark.gen_test
async def test_wrong_password_unknown_user_and_empty_password_fail(make, people):
    backend = make()
    assert await backend.authenticate("alice", "wrong") is None
    assert await backend.authenticate("alice", PASSWORD.upper()) is None
    assert await backend.authenticate("nobody", PASSWORD) is None
    assert await backend.authenticate("alice", "") is None
    assert await backend.authenticate("", PASSWORD) is None


@pytest.mark.gen_test
@pytest.mark.parametrize("username", ["*", "a*", "alice*", "alice)(uid=*", "*)(|(uid=*",
                                      "alice)(|(uid=*)", "(uid=alice)", "alice\\", "\\2a",
                                      "alice\x00", "alice ", " alice"])
async def test_filter_metacharacters_in_the_username_match_nobody(make, people, username):
    assert await make().authenticate(username, PASSWORD) is None


@pytest.mark.gen_test
async def test_a_username_with_metacharacters_matches_only_itself(make, people, slapd_server,
                                                                  ldap_ou):
    star = add(slapd_server, ldap_ou, "al*", password="star-pw")
    backend = make()
    assert (await backend.authenticate("al*", "star-pw")).raw_sub == star
    assert await backend.authenticate("al*", PASSWORD) is None  # not alice's nor alfred's


@pytest.mark.gen_test
async def test_username_is_case_insensitive_and_reported_as_stored(make, people):
    alice = await make().authenticate("ALICE", PASSWORD)
    assert alice.username == "alice" and alice.raw_sub == people["alice"]


@pytest.mark.gen_test
async def test_ldap_filter_decides_who_can_sign_in(make, people):
    backend = make(user_filter="(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))")
    assert await backend.authenticate("carol", PASSWORD) is None
    assert await backend.lookup(people["carol"]) is None
    assert (await backend.authenticate("alice", PASSWORD)).username == "alice"
    # a filter without outer parentheses is accepted, as Konnect's env examples write it
    assert (await make(user_filter="objectClass=inetOrgPerson").authenticate(
        "carol", PASSWORD)).username == "carol"


@pytest.mark.gen_test
async def test_two_entries_with_one_login_are_refused_and_logged(make, slapd_server, ldap_ou,
                                                                 caplog):
    for ou in ("a", "b"):
        add(slapd_server, slapd_server.add_ou(ou, ldap_ou), "twin")
    assert await make().authenticate("twin", PASSWORD) is None
    assert "2 entries match uid='twin'" in caplog.text


@pytest.mark.gen_test
async def test_lookup_by_dn_returns_the_same_identity(make, people, slapd_server):
    backend = make()
    alice = await backend.authenticate("alice", PASSWORD)
    assert await backend.lookup(alice.raw_sub) == alice
    for bad in ("", "not a dn", slapd_server.admin_dn, f"uid=alice,{slapd_server.people_dn}",
                people["alice"].upper()):
        assert await backend.lookup(bad) is None, bad


@pytest.mark.gen_test
async def test_a_deleted_user_is_gone(make, people, slapd_server):
    backend = make()
    assert await backend.lookup(people["bob"]) is not None
    conn = slapd_server.connect()
    try:
        conn.delete(people["bob"])
    finally:
        conn.unbind()
    assert await backend.lookup(people["bob"]) is None
    assert await backend.authenticate("bob", PASSWORD) is None


@pytest.mark.gen_test
async def test_sub_attributes_make_the_subject_and_round_trip(make, people, slapd_server,
                                                              ldap_ou):
    tricky = add(slapd_server, ldap_ou, "x*)(uid=alice", password="tricky-pw")
    backend = make(attributes=Attributes(sub=("uid",)))
    user = await backend.authenticate("x*)(uid=alice", "tricky-pw")
    assert user.raw_sub == "uid=x%2A%29%28uid%3Dalice"
    again = await backend.lookup(user.raw_sub)
    assert again == user and again.name == "X*)(uid=alice Example" and tricky != people["alice"]
    assert (await backend.lookup("uid=alice")).username == "alice"
    for bad in ("uid=%2A", "uid=a%2A", "uid=alice&uid=bob", "cn=Alice+Example",
                "uid=alice&objectClass=person", "uid", "uid=alice&&", people["alice"]):
        assert await backend.lookup(bad) is None, bad


@pytest.mark.gen_test
async def test_several_sub_attributes_are_encoded_like_go_url_values(make, people):
    backend = make(attributes=Attributes(sub=("uid", "employeeNumber")))
    alice = await backend.authenticate("alice", PASSWORD)
    assert alice.raw_sub == "employeeNumber=1001&uid=alice"  # sorted names, as Go encodes
    assert await backend.lookup(alice.raw_sub) == alice
    assert await backend.lookup("employeeNumber=1001&uid=bob") is None


@pytest.mark.gen_test
async def test_uidnumber_attribute_gives_the_numeric_id(make, people, slapd_server, ldap_ou):
    add(slapd_server, ldap_ou, "dave", employeeNumber="not-a-number")
    add(slapd_server, ldap_ou, "dora", employeeNumber="1_001")
    backend = make(attributes=Attributes(uidnumber="employeenumber"))
    assert (await backend.authenticate("alice", PASSWORD)).numeric_id == 1001
    assert (await backend.lookup(people["bob"])).numeric_id == 1003
    assert await backend.authenticate("dave", PASSWORD) is None  # Konnect: an invalid record
    assert await backend.authenticate("dora", PASSWORD) is None
    carol = await backend.authenticate("carol", PASSWORD)  # no number at all: Konnect's id 0
    assert carol.username == "carol" and carol.numeric_id is None


@pytest.mark.gen_test
async def test_uuid_attribute_text_binary_and_uuid(make, slapd_server, ldap_ou):
    raw = uuid.uuid4()
    add(slapd_server, ldap_ou, "erin", carLicense="uuid-erin", audio=raw.bytes)
    add(slapd_server, ldap_ou, "fred", audio=str(raw).encode())
    add(slapd_server, ldap_ou, "gina", audio=b"not a uuid")
    text = make(attributes=Attributes(uuid="carlicense"))
    binary = make(attributes=Attributes(uuid="audio", uuid_type="binary"))
    as_uuid = make(attributes=Attributes(uuid="audio", uuid_type="uuid"))
    assert (await text.authenticate("erin", PASSWORD)).uuid == "uuid-erin"
    assert (await binary.authenticate("erin", PASSWORD)).uuid == \
        base64.b64encode(raw.bytes).decode()
    assert (await as_uuid.authenticate("erin", PASSWORD)).uuid == str(raw)
    assert (await as_uuid.authenticate("fred", PASSWORD)).uuid == str(raw)
    assert (await as_uuid.authenticate("ERIN", PASSWORD)).uuid == str(raw)
    assert (await as_uuid.authenticate("gina", PASSWORD)).uuid == ""


@pytest.mark.gen_test
async def test_make_backend_builds_it_from_konnect_settings(slapd_server, ldap_ou, people):
    env = {"LDAP_URI": slapd_server.url, "LDAP_BINDDN": slapd_server.admin_dn,
           "LDAP_BINDPW": slapd_server.admin_password, "LDAP_BASEDN": ldap_ou,
           "LDAP_SCOPE": "one", "LDAP_UIDNUMBER_ATTRIBUTE": "employeeNumber",
           "LDAP_UUID_ATTRIBUTE": "carLicense", "LDAP_SUB_ATTRIBUTES": "uid"}
    settings = load_settings(["--identity-manager", "ldap", "--iss", "https://op.example.test"],
                             env, service="identifier")
    backend = make_backend(settings)
    try:
        assert isinstance(backend.inner, LDAPBackend) and backend.manager == "ldap"  # cached
        alice = await backend.authenticate("alice", PASSWORD)
        assert (alice.raw_sub, alice.numeric_id, alice.uuid) == ("uid=alice", 1001, "uuid-alice")
    finally:
        await backend.close()


@pytest.mark.parametrize("args, kw, message", [
    (("http://host", "dc=x"), {}, "must be ldap://"),
    (("ldap://host", ""), {}, "ldap_basedn is required"),
    (("ldap://host", "dc=x"), {"bindpw": "pw"}, "must be set together"),
    (("ldap://host", "dc=x"), {"binddn": "cn=reader"}, "must be set together"),
    (("ldap://host", "dc=x"), {"scope": "all"}, "ldap_scope"),
    (("ldap://host", "dc=x"), {"user_filter": "(&(uid=a)"}, "not an LDAP filter"),
    (("ldap://host", "dc=x"), {"attributes": Attributes(uuid_type="hex")}, "uuid_attribute_type"),
])
def test_configuration_problems_are_reported(args, kw, message):
    with pytest.raises(BackendConfigError, match=message):
        LDAPBackend(*args, **kw)


@pytest.mark.gen_test
async def test_a_refused_service_bind_is_unavailable_and_logged(make, people, caplog):
    backend = make(bindpw="wrong")
    with pytest.raises(BackendUnavailable):
        await backend.authenticate("alice", PASSWORD)
    with pytest.raises(BackendUnavailable):
        await backend.lookup(people["alice"])
    assert "service bind as 'cn=admin,dc=example,dc=test' refused" in caplog.text
    assert "wrong" not in caplog.text


@pytest.mark.gen_test
async def test_a_missing_base_dn_is_unavailable(make, people, slapd_server, caplog):
    with pytest.raises(BackendUnavailable):
        await make(base=f"ou=missing,{slapd_server.base_dn}").authenticate("alice", PASSWORD)
    assert "does not exist" in caplog.text


@pytest.mark.gen_test
async def test_a_stopped_directory_is_unavailable_at_once_and_recovers(private_slapd, make):
    ou = private_slapd.add_ou("people2")
    dn = add(private_slapd, ou, "alice")
    backend = make(url=private_slapd.url, base=ou, binddn=private_slapd.admin_dn,
                   bindpw=private_slapd.admin_password, timeout=2)
    assert (await backend.authenticate("alice", PASSWORD)).raw_sub == dn
    private_slapd.stop()
    fds = open_fds()
    started = time.monotonic()
    for _ in range(10):
        with pytest.raises(BackendUnavailable):
            await backend.authenticate("alice", PASSWORD)
        with pytest.raises(BackendUnavailable):
            await backend.lookup(dn)
    assert time.monotonic() - started < 2
    assert open_fds() <= fds  # ldap3's socket of a failed connect was closed
    private_slapd.start()
    assert (await backend.lookup(dn)).raw_sub == dn


@pytest.mark.gen_test
async def test_a_hung_directory_times_out(private_slapd, make):
    ou = private_slapd.add_ou("people2")
    add(private_slapd, ou, "alice")
    backend = make(url=private_slapd.url, base=ou, binddn=private_slapd.admin_dn,
                   bindpw=private_slapd.admin_password, timeout=1)
    fds = open_fds()
    private_slapd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.authenticate("alice", PASSWORD)
        assert time.monotonic() - started < 3.5
    finally:
        private_slapd.resume()
    assert (await backend.authenticate("alice", PASSWORD)).username == "alice"
    await backend.close()  # and with it the pooled service connections
    assert open_fds() <= fds


@pytest.mark.gen_test
async def test_sockets_are_closed_after_logons_and_failures(make, people):
    backend = make()
    await backend.authenticate("alice", PASSWORD)  # let the thread pool start its threads
    fds = open_fds()
    for password in (PASSWORD, "wrong") * 10:
        await backend.authenticate("alice", password)
        await backend.lookup(people["bob"])
    assert open_fds() <= fds


@pytest.mark.gen_test
async def test_concurrent_logons_leave_the_event_loop_responsive(make, people):
    backend = make()
    gaps, done = [], False

    async def ticker():
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    users = ["alice", "alfred", "bob"] * 6 + ["alice", "nobody"]
    results = await asyncio.gather(*(backend.authenticate(u, PASSWORD) for u in users))
    done = True
    await tick
    assert [r.username if r else None for r in results] == users[:-1] + [None]
    assert max(gaps) < 0.1


@pytest.mark.gen_test
async def test_ldaps_verifies_the_certificate(tls_slapd, make, caplog):
    def backend(**kw):
        return make(url=tls_slapd.ldaps_url, base=tls_slapd.people_dn,
                    binddn=tls_slapd.admin_dn, bindpw=tls_slapd.admin_password, **kw)

    assert (await backend(ca_file=tls_slapd.ca).authenticate("alice", PASSWORD)) is not None
    assert (await backend(insecure=True).authenticate("alice", PASSWORD)) is not None
    fds = open_fds()
    with pytest.raises(BackendUnavailable):  # self-signed CA not trusted
        await backend().authenticate("alice", PASSWORD)
    with pytest.raises(BackendUnavailable):  # trusted, but issued for 127.0.0.1 only
        await make(url=f"ldaps://localhost:{tls_slapd.tls_port}", base=tls_slapd.people_dn,
                   ca_file=tls_slapd.ca).authenticate("alice", PASSWORD)
    with pytest.raises(BackendUnavailable):  # TLS to the plain-text port
        await make(url=tls_slapd.url.replace("ldap:", "ldaps:"), base=tls_slapd.people_dn,
                   ca_file=tls_slapd.ca, timeout=2).authenticate("alice", PASSWORD)
    assert open_fds() <= fds
    assert "unable to get local issuer certificate" in caplog.text
    assert "Hostname mismatch" in caplog.text


@pytest.mark.gen_test
async def test_logon_takes_nfc_and_nfd_spellings_and_still_refuses_padded_names(make, slapd_server,
                                                                                ldap_ou):
    """The users file normalises sign-in names to NFC; the LDAP backend does the same and does
    not regress: slapd's own matching ignores the trailing space (RFC 4518 §2.6.1), our check
    of the login attribute does not."""
    dn = slapd_server.add_user(ldap_ou, "jos\u00e9", PASSWORD, "Jos\u00e9", "Example",
                               mail="jose@example.test")
    add(slapd_server, ldap_ou, "alice")
    backend = make()
    for typed in ("jos\u00e9", "jose\u0301", "JOSE\u0301"):
        identity = await backend.authenticate(typed, PASSWORD)
        assert identity is not None and identity.raw_sub == dn and identity.username == "jos\u00e9"
    assert (await backend.authenticate("alice", PASSWORD)).username == "alice"
    for typed in ("alice ", " alice", "jose", "alice\u200b"):
        assert await backend.authenticate(typed, PASSWORD) is None


@pytest.mark.parametrize("uri", ["ldap://127.0.0.1:abc", "ldap://127.0.0.1:99999", "h:0"])
def test_an_ldap_uri_with_a_bad_port_is_a_config_error_not_a_traceback(uri):
    with pytest.raises(BackendConfigError, match="1 to 65535"):
        LDAPBackend(uri, "dc=example,dc=test")


@pytest.mark.gen_test
async def test_ldap_uidnumber_beyond_64_bits_is_an_invalid_record_not_a_500(
        ldap_make, slapd_server, ldap_ou):
    ldap_add(slapd_server, ldap_ou, "huge", employeeNumber="9" * 5000)
    ldap_add(slapd_server, ldap_ou, "wide", employeeNumber=str(2 ** 64))
    ldap_add(slapd_server, ldap_ou, "fits", employeeNumber=str(-2 ** 63))
    backend = ldap_make(attributes=Attributes(uidnumber="employeeNumber"))
    assert await backend.authenticate("huge", LDAP_PASSWORD) is None  # was ValueError
    assert await backend.authenticate("wide", LDAP_PASSWORD) is None  # was unencodable
    fits = await backend.authenticate("fits", LDAP_PASSWORD)
    assert fits.numeric_id == -2 ** 63 and orjson.dumps(fits.to_record())


@pytest.mark.gen_test
async def test_ldap_binary_sub_attribute_values_give_distinct_subjects(
        ldap_make, slapd_server, ldap_ou):
    # two users whose octet-string sub attribute differs only in non-UTF-8 octets
    ldap_add(slapd_server, ldap_ou, "oct1", audio=b"\xff\xfe-1")
    ldap_add(slapd_server, ldap_ou, "oct2", audio=b"\xfe\xff-1")
    backend = ldap_make(attributes=Attributes(sub=("audio",)))
    one = await backend.authenticate("oct1", LDAP_PASSWORD)
    two = await backend.authenticate("oct2", LDAP_PASSWORD)
    assert one.raw_sub == "audio=%FF%FE-1" and two.raw_sub == "audio=%FE%FF-1"  # as Go encodes
    assert one.sub != two.sub  # was one subject ("audio=%EF%BF%BD%EF%BF%BD-1") for both


@pytest.mark.gen_test
async def test_ldap_non_ascii_sub_attribute_keeps_its_subject_and_round_trips(
        ldap_make, slapd_server, ldap_ou):
    slapd_server.add_user(ldap_ou, "jöns+x", LDAP_PASSWORD, "Jöns", "Example",
                          mail="jons@example.test", extra_attrs={"employeeNumber": "ä 1"})
    backend = ldap_make(attributes=Attributes(sub=("uid", "employeeNumber")))
    user = await backend.authenticate("jöns+x", LDAP_PASSWORD)
    assert user.raw_sub == "employeeNumber=%C3%A4+1&uid=j%C3%B6ns%2Bx"  # unchanged encoding
    assert await backend.lookup(user.raw_sub) == user
    assert await backend.lookup("employeeNumber=%C3%A4+1&uid=j%F6ns%2Bx") is None
