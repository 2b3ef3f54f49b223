"""Konnect compatibility, second audit: what an administrator replacing Konnect relies on
(konnect.md §3 flags and environment). See docs/konnect-compatibility.md."""

from shared.config import load_settings

ISS = ["--iss", "https://idp.example.test"]

# konnect.md §3.2: every `konnectd serve` flag, with a value Konnect accepts for kc/ldap.
# Left out on purpose (docs/konnect-compatibility.md): --iss (above), --signing-private-key,
# --validation-keys-path, --encryption-secret, --identifier-*-conf, --identifier-client-path
# (files that must exist), --uri-base-path (refused: not built), --allow-client-guests
# (tests/authorities/test_guests.py),
# --sign-in-uri, --authorization-endpoint-uri, --endsession-endpoint-uri (cookie manager only).
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


def test_konnect_serve_flags_are_all_accepted():
    """konnect.md §3.2: a Konnect command line (systemd unit, Docker ARGS) must not stop the
    start-up with "unrecognized arguments" (argparse exit 2)."""
    argv = ISS + [part for flag in KONNECT_SERVE_FLAGS for part in flag]
    settings = load_settings(argv, {}, service="token")
    assert settings.access_token_expiration == 600


def test_pprof_flags_are_accepted_with_konnects_defaults():
    """konnect.md §3.2 `--with-pprof` / `--pprof-listen` (false / 127.0.0.1:6060): accepted,
    no effect (docs/konnect-compatibility.md)."""
    defaults = load_settings(ISS, {}, service="token")
    assert (defaults.with_pprof, defaults.pprof_listen) == (False, "127.0.0.1:6060")
    on = load_settings(ISS + ["--with-pprof", "--pprof-listen", "0.0.0.0:6060"], {},
                       service="authorize")
    assert (on.with_pprof, on.pprof_listen) == (True, "0.0.0.0:6060")

