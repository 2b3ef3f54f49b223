"""Settings: flags, environment, konnectd.cfg and defaults (shared/config.py,
shared/options.py), validated at start-up with every problem at once; every flag of
`konnectd serve` accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings
from shared.options import DEFAULT_LISTEN, OPTIONS, SERVICES

ROOT = Path(__file__).resolve().parents[2]


ISS = ["--iss", "https://idp.example.test"]


def load(argv=(), env=None, service="token"):
    return load_settings(list(argv), env or {}, service=service)


def problems_of(argv=(), env=None, service="token"):
    with pytest.raises(ConfigError) as info:
        load(argv, env, service)
    return info.value.problems


def _run(service, *args, env=None):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("KONNECTD_", "LDAP_", "KOPANO_", "OIDC_"))}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", f"services.{service}", *args], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=60)


# Konnect's cmd/konnectd/serve.go: every `konnectd serve` flag, with a value Konnect accepts
# for kc/ldap.
# Left out on purpose (docs/konnect-compatibility.md): --iss (above), --signing-private-key,
# (files that must exist), --uri-base-path (refused: not built), --allow-client-guests
# (tests/authorities/test_guests.py),
KONNECT_SERVE_FLAGS = [
    ["--listen", "127.0.0.1:8777"], ["--signing-kid", "k1"], ["--signing-method", "PS256"],
    ["--signed-out-uri", "/signin/v1/goodbye"],
    ["--disable-identifier-client"], ["--insecure"], ["--trusted-proxy", "10.0.0.0/8"],
    ["--allow-scope", "openid"], ["--allow-dynamic-client-registration"],
    ["--access-token-expiration", "600"], ["--id-token-expiration", "3600"],
    ["--refresh-token-expiration", "94608000"], ["--dynamic-client-secret-expiration", "0"],
    ["--log-timestamp=false"], ["--log-level", "info"],
    ["--with-metrics"], ["--metrics-listen", "127.0.0.1:6777"],
    ["--with-pprof"], ["--pprof-listen", "127.0.0.1:6060"],
]


def test_defaults_follow_konnect():
    s = load(ISS)
    assert s.signing_method == "PS256"
    assert (s.access_token_expiration, s.id_token_expiration, s.refresh_token_expiration) == \
        (600, 3600, 94608000)
    assert s.identity_manager == "users"
    assert s.ldap_filter == "(objectClass=inetOrgPerson)"
    assert s.ldap_login_attribute == "uid" and s.ldap_uuid_attribute_type == "text"
    assert s.log_level == "info" and s.log_timestamp is True


@pytest.mark.parametrize("service", SERVICES)
def test_listen_default_is_per_service(service):
    assert load(ISS, service=service).listen == DEFAULT_LISTEN[service]


def test_issuer_from_konnect_env_name():
    assert load(env={"OIDC_ISSUER_IDENTIFIER": "https://a.example"}).iss == "https://a.example"


def test_settings_env_overrides_cfg_file_and_flag_overrides_env(tmp_path):
    cfg = tmp_path / "konnectd.cfg"
    cfg.write_text("# comment\noidc_issuer_identifier = https://cfg.example\n"
                   "listen = 127.0.0.1:1111\nlog_level = debug\nsigning_kid = 'from-cfg'\n")
    s = load(["--config", str(cfg)])
    assert (s.iss, s.listen, s.log_level, s.signing_kid) == \
        ("https://cfg.example", "127.0.0.1:1111", "debug", "from-cfg")
    s = load(["--config", str(cfg)], {"KONNECTD_LISTEN": "127.0.0.1:2222"})
    assert s.listen == "127.0.0.1:2222"
    s = load(["--config", str(cfg), "--listen", "127.0.0.1:3333"],
             {"KONNECTD_LISTEN": "127.0.0.1:2222"})
    assert s.listen == "127.0.0.1:3333"


def test_config_file_from_env(tmp_path):
    cfg = tmp_path / "k.cfg"
    cfg.write_text("oidc_issuer_identifier=https://env-cfg.example\n")
    assert load(env={"KONNECTD_CONFIG": str(cfg)}).iss == "https://env-cfg.example"


def test_every_flag_has_a_konnectd_env_twin():
    for opt in OPTIONS:
        assert "KONNECTD_" + opt.name.upper() in opt.envs


def test_konnect_env_names_and_twins_both_work():
    assert load(ISS, {"LDAP_FILTER": "(uid=*)"}).ldap_filter == "(uid=*)"
    assert load(ISS, {"KONNECTD_LDAP_FILTER": "(cn=*)"}).ldap_filter == "(cn=*)"
    assert load(ISS, {"KONNECTD_IDENTIFIER_REGISTRATION_CONF": __file__}) \
        .identifier_registration_conf == Path(__file__)


def test_repeatable_flags_and_space_separated_env(tmp_path):
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("x"), b.write_text("y")
    s = load(ISS + ["--signing-private-key", str(a), "--signing-private-key", str(b),
                    "--allow-scope", "openid", "--allow-scope", "profile"])
    assert s.signing_private_key == (a, b)
    assert s.allow_scope == ("openid", "profile")
    s = load(ISS, {"KONNECTD_SIGNING_PRIVATE_KEY": f"{a} {b}"})
    assert s.signing_private_key == (a, b)


def test_cfg_trusted_proxies_takes_effect(tmp_path):
    """Konnect's binscript misspelt this key, so it never worked (`trused_proxies` in
    scripts/kopano-konnectd.binscript)."""
    cfg = tmp_path / "k.cfg"
    cfg.write_text("trusted_proxies = 10.0.0.1 192.168.0.0/16\nallowed_scopes = openid email\n")
    s = load(ISS + ["--config", str(cfg)])
    assert s.trusted_proxy == ("10.0.0.1", "192.168.0.0/16")
    assert s.allow_scope == ("openid", "email")


@pytest.mark.parametrize("raw,expected", [("yes", True), ("no", False), ("true", True),
                                          ("0", False), ("1", True), ("FALSE", False)])
def test_booleans_accept_cfg_spellings(raw, expected):
    assert load(ISS, {"KONNECTD_INSECURE": raw}).insecure is expected


def test_bool_flag_without_value_is_true():
    assert load(ISS + ["--allow-dynamic-client-registration"]).allow_dynamic_client_registration


def test_zero_lifetime_means_default_as_in_konnect():
    assert load(ISS + ["--access-token-expiration", "0"]).access_token_expiration == 600


def test_positional_identity_manager_as_konnect_serve():
    s = load(ISS + ["--sign-in-uri", "https://backend.example/login", "cookie",
                    "https://backend.example/me", "sid other"])
    assert s.identity_manager == "cookie"
    assert s.identity_manager_args == ("https://backend.example/me", "sid other")


def test_validate_reports_all_config_problems_at_once(tmp_path):
    problems = problems_of(["--iss", "http://idp.example", "--access-token-expiration", "ten",
                            "--listen", "nowhere", "--signing-private-key", str(tmp_path / "nope"),
                            "--trusted-proxy", "not-an-ip", "--log-level", "loud"],
                           {"KONNECTD_REDIS_URL": "memcached://x", "KONNECTD_INSECURE": "maybe"})
    text = "\n".join(problems)
    assert len(problems) == 8, text
    for needle in ("iss", "access_token_expiration", "'ten'", "listen", "no such file",
                   "trusted_proxy", "log_level", "redis_url", "insecure"):
        assert needle in text


@pytest.mark.parametrize("iss,ok", [
    ("https://idp.example", True),
    ("https://idp.example:8443/sub", True),
    ("http://idp.example", False),
    ("https://idp.example/?a=b", False),
    ("https://idp.example/#frag", False),
    ("https://", False),
    ("ftp://idp.example", False),
])
def test_issuer_must_be_https(iss, ok):
    if ok:
        assert load(["--iss", iss]).iss == iss
    else:
        assert any("iss" in p for p in problems_of(["--iss", iss]))


def test_missing_issuer_is_a_problem():
    assert problems_of() == ["iss is required (--iss or OIDC_ISSUER_IDENTIFIER)"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_http_issuer_only_on_loopback_with_explicit_flag(host):
    iss = f"http://{host}:8080"
    assert problems_of(["--iss", iss])
    assert load(["--iss", iss, "--allow-http-loopback-issuer"]).iss == iss


def test_http_issuer_on_public_host_refused_even_with_flag():
    assert problems_of(["--iss", "http://idp.example", "--allow-http-loopback-issuer"])


def test_encryption_secret_size_is_checked(tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"x" * 31)
    assert any("31 bytes" in p for p in problems_of(ISS + ["--encryption-secret", str(secret)]))
    secret.write_bytes(b"x" * 32)
    assert load(ISS + ["--encryption-secret", str(secret)]).encryption_secret == secret


def test_ldap_manager_requires_uri_and_basedn():
    problems = problems_of(ISS, {"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_BINDPW": "pw"})
    assert any("ldap_uri" in p for p in problems)
    assert any("ldap_basedn" in p for p in problems)
    assert any("ldap_binddn" in p for p in problems)
    s = load(ISS, {"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_URI": "ldap://127.0.0.1:389",
                   "LDAP_BASEDN": "dc=example,dc=test"})
    assert s.ldap_uri == "ldap://127.0.0.1:389"


def test_kc_client_certificate_and_key_go_together(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    problems = problems_of(ISS + ["kc"], {"KOPANO_CLIENT_CERTIFICATE": str(cert)})
    assert any("kopano_client_certificate" in p for p in problems)


def test_cookie_manager_needs_its_arguments():
    """Konnect crashes here (cmd/konnectd/serve.go reads the missing argument); we report it."""
    assert any("cookie" in p for p in problems_of(ISS + ["cookie"]))


def test_unknown_identity_manager_is_a_problem():
    assert any("identity_manager" in p for p in problems_of(ISS + ["nosuch"]))


def test_secret_values_are_not_in_repr():
    s = load(ISS, {"LDAP_BINDPW": "hunter2-secret", "KOPANO_SERVER_PASSWORD": "kc-secret"})
    assert "hunter2-secret" not in repr(s) and "kc-secret" not in repr(s)


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_every_option_with_env_name_and_default(service):
    result = _run(service, "--help")
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stdout.split())
    for opt in OPTIONS:
        if opt.flag:
            assert opt.flag_name in flat
        for env in opt.envs:
            assert env in flat
    assert "default: PS256" in flat and "default: 600" in flat


def test_bad_settings_exit_with_status_2_and_one_line_per_problem():
    result = _run("userinfo", "--iss", "http://idp.example", "--log-level", "loud")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_exits_with_status_2():
    result = _run("token", "--no-such-flag")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_configuration_doc_is_generated_from_the_option_table():
    from shared.options import markdown_table
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc.endswith(markdown_table()), "regenerate: python -m shared.options"


def test_every_numeric_option_has_a_range():
    for opt in OPTIONS:
        if opt.kind == "int":
            assert opt.minimum is not None and opt.maximum is not None, opt.name
            assert opt.minimum <= opt.default <= opt.maximum, opt.name


@pytest.mark.parametrize("flag,value", [
    ("--access-token-expiration", "999999999999999999999"),   # was a 500 on every token request
    ("--access-token-expiration", str(10 * 365 * 86400 + 1)),
    ("--id-token-expiration", "99999999999"),
    ("--refresh-token-expiration", "99999999999999"),
    ("--dynamic-client-secret-expiration", "99999999999"),
    ("--code-expiration", "999999999999999999999"),           # was a 503 on every authorize
    ("--code-expiration", "601"),                             # RFC 6749 §4.1.2: at most 10 min
    ("--clock-skew", "9999999999"),                           # accepted year-old tokens
    ("--clock-skew", "601"),
    ("--ldap-timeout", "99999999999"),                        # was an OverflowError
    ("--redis-timeout", "99999999999999"),
    ("--kc-timeout", "601"),
    ("--kopano-server-session-timeout", "86401"),
    ("--max-body-size", "99999999999999999999"),
])
def test_numbers_above_the_maximum_are_refused_at_start(flag, value):
    problems = problems_of(ISS + [flag, value])
    name = flag[2:].replace("-", "_")
    assert len(problems) == 1 and problems[0].startswith(f"{name} (flag) has value {value!r}")
    assert "must be at most" in problems[0]


@pytest.mark.parametrize("flag,value,expected", [
    ("--access-token-expiration", str(10 * 365 * 86400), 315360000),
    ("--code-expiration", "600", 600),
    ("--clock-skew", "600", 600),
    ("--ldap-timeout", "600", 600),
    ("--kc-timeout", "1", 1),
])
def test_numbers_at_the_maximum_are_accepted(flag, value, expected):
    assert getattr(load(ISS + [flag, value]), flag[2:].replace("-", "_")) == expected


@pytest.mark.parametrize("value", ["1_000", "+60", "\u0663\u0660", "6e1", "60.0", "-"])
def test_numbers_are_plain_ascii_digits(value):
    """int() would take "1_000", "+60" and Arabic-Indic digits; a setting takes 0-9 only."""
    assert problems_of(ISS, {"KONNECTD_CODE_EXPIRATION": value}) == [
        f"code_expiration (KONNECTD_CODE_EXPIRATION) has value {value!r}: not a whole number"]


def test_a_huge_negative_number_is_below_the_minimum():
    assert problems_of(ISS + ["--clock-skew", "-" + "9" * 21]) == [
        f"clock_skew (flag) has value {'-' + '9' * 21!r}: must be at least 0"]


@pytest.mark.parametrize("iss", ["https://idp.example.test:99999", "https://idp.example.test:abc",
                                 "https://idp.example.test:0", "https://idp.example.test:",
                                 "https://idp.example.test:+443", "https://[::1]:70000/"])
def test_issuer_port_must_be_1_to_65535(iss):
    problems = problems_of(["--iss", iss])
    assert len(problems) == 1 and "is not a number from 1 to 65535" in problems[0], problems


def test_issuer_with_a_valid_port_is_accepted():
    assert load(["--iss", "https://idp.example.test:65535/x"]).iss.endswith(":65535/x")


@pytest.mark.parametrize("url,why", [
    ("redis://127.0.0.1:abc/0", "1 to 65535"), ("redis://127.0.0.1:99999/0", "1 to 65535"),
    ("rediss://:hunter2@127.0.0.1:0/0", "1 to 65535"), ("redis://127.0.0.1:6379/abc", "database"),
])
def test_redis_url_port_and_database_are_checked_without_showing_the_password(url, why):
    problems = problems_of(ISS, {"KONNECTD_REDIS_URL": url})
    assert len(problems) == 1 and why in problems[0] and "hunter2" not in problems[0]


@pytest.mark.parametrize("env,name", [
    ({"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_URI": "ldap://h:abc", "LDAP_BASEDN": "dc=x"},
     "ldap_uri"),
    ({"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_URI": "h:99999", "LDAP_BASEDN": "dc=x"},
     "ldap_uri"),
    ({"KONNECTD_IDENTITY_MANAGER": "kc", "KOPANO_SERVER_DEFAULT_URI": "https://h:abc/"},
     "kopano_server_default_uri"),
])
def test_backend_uri_ports_are_checked(env, name):
    problems = problems_of(ISS, env)
    assert len(problems) == 1 and problems[0].startswith(name) and "1 to 65535" in problems[0]


def test_bad_ports_exit_with_status_2_and_no_traceback():
    result = _run("token", "--iss", "https://idp.example.test:99999",
                  env={"KONNECTD_REDIS_URL": "redis://127.0.0.1:abc/0",
                       "KONNECTD_EVENT_LOOP": "asyncio", "KONNECTD_CODE_EXPIRATION": "9" * 21})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) == 3 and "Traceback" not in result.stderr, result.stderr


def test_a_redis_url_refused_by_redis_py_is_a_startup_problem(tmp_path):
    """Config checks catch the common mistakes; whatever redis-py still refuses joins the
    StartupError list (exit 2) instead of a traceback."""
    import dataclasses

    from shared.config import StartupError
    from shared.deps import Core
    from tests.support.op import make_state, settings_for

    state = make_state(tmp_path)
    settings = settings_for("token", state, "redis://127.0.0.1:6379/0")
    broken = dataclasses.replace(settings,
                                 redis_url="redis://:pw@127.0.0.1:6379/0?socket_timeout=abc")
    with pytest.raises(StartupError) as info:
        Core.from_settings(broken)
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith("redis_url 'redis://:***@127.0.0.1:6379/0")
    assert "pw" not in info.value.problems[0]


def test_konnect_serve_flags_are_all_accepted():
    """Konnect's cmd/konnectd/serve.go: a Konnect command line (systemd unit, Docker ARGS) must
    not stop the start-up with "unrecognized arguments" (argparse exit 2)."""
    argv = ISS + [part for flag in KONNECT_SERVE_FLAGS for part in flag]
    settings = load_settings(argv, {}, service="token")
    assert settings.access_token_expiration == 600


def test_pprof_flags_are_accepted_with_konnects_defaults():
    """Konnect's `--with-pprof` / `--pprof-listen` (false / 127.0.0.1:6060 in cmd/konnectd/serve.go):
    accepted, no effect (docs/konnect-compatibility.md)."""
    defaults = load_settings(ISS, {}, service="token")
    assert (defaults.with_pprof, defaults.pprof_listen) == (False, "127.0.0.1:6060")
    on = load_settings(ISS + ["--with-pprof", "--pprof-listen", "0.0.0.0:6060"], {},
                       service="authorize")
    assert (on.with_pprof, on.pprof_listen) == (True, "0.0.0.0:6060")


@pytest.mark.parametrize("extra,needle", [
    (["--uri-base-path", "/idp"], "not supported"),
    (["--sign-in-uri", "https://app.example/login"], "only used by the cookie"),
])
def test_konnect_flags_we_do_not_honour_are_refused_not_ignored(extra, needle):
    from shared.config import ConfigError
    with pytest.raises(ConfigError, match=needle):
        load_settings(["--iss", "https://idp.example.test", *extra], {}, service="identifier")
