"""Dev state for handler tests: keys, secret, registry, settings and a real `Core`."""

from __future__ import annotations

import base64
import hashlib
import secrets
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from shared import keytool
from shared.config import load_settings
from shared.deps import Core
from shared.grants import Grant
from shared.identity import Identity
from shared.users.passwords import hash_password

ISSUER = "https://idp.example.test"
SECRET = "s3cr3t-._~+/ %"  # characters clients must percent-encode in Basic credentials

REGISTRY = f"""
clients:
  - id: web-rp
    name: Web RP
    secret: "{SECRET}"
    redirect_uris: [https://rp.example.test/cb]
  - id: trusted-rp
    name: Trusted RP
    trusted: yes
    secret: other-secret
    redirect_uris: [https://trusted.example.test/cb]
  - id: public-app
    name: Native App
    application_type: native
    redirect_uris: [http://127.0.0.1/cb]
  - id: rs256-rp
    secret: rs
    id_token_signed_response_alg: PS256
    userinfo_signed_response_alg: RS256
    redirect_uris: [https://rs.example.test/cb]
"""

ALICE = Identity(raw_sub="alice-uuid", backend="identifier-users", username="alice",
                 name="Alice Example", given_name="Alice", family_name="Example",
                 email="alice@example.test", email_verified=True, numeric_id=1001,
                 uuid="alice-uuid")


# A users file (the `users` backend) with alice (password wonderland) and bob (builder).
USERS = {"users": [
    {"username": "alice", "password": hash_password("wonderland"), "name": "Alice Example",
     "given_name": "Alice", "family_name": "Example", "email": "alice@example.test",
     "email_verified": True, "id": 1001, "uuid": "7c0e-alice"},
    {"username": "bob", "password": hash_password("builder"), "name": "Bob", "id": 1002,
     "uuid": "bob-uuid"},
]}


def make_state(directory: Path, registry: str = REGISTRY, key_type: str = "rsa") -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    result = keytool.generate(directory, key_type, bits=2048)
    (directory / "registry.yaml").write_text(textwrap.dedent(registry))
    return {"key": str(directory / keytool.LINK_NAME),
            "secret": str(directory / keytool.SECRET_NAME),
            "registry": str(directory / "registry.yaml"), "kid": result["kid"]}


def settings_for(service: str, state: dict, redis_url: str, extra: Sequence[str] = ()):
    argv = ["--iss", ISSUER, "--signing-private-key", state["key"],
            "--encryption-secret", state["secret"],
            "--identifier-registration-conf", state["registry"],
            "--redis-url", redis_url, *extra]
    return load_settings(argv, {}, service=service)


def ldap_flags(server, basedn: str) -> list[str]:
    """The flags of the `ldap` identity manager on a test slapd (tests/support/servers.py),
    bound as its admin."""
    return ["--identity-manager", "ldap", "--ldap-uri", server.url,
            "--ldap-binddn", server.admin_dn, "--ldap-bindpw", server.admin_password,
            "--ldap-basedn", basedn]


def make_core(service: str, state: dict, redis_url: str, extra: Sequence[str] = (),
              now=None) -> Core:
    settings = settings_for(service, state, redis_url, extra)
    return Core.from_settings(settings, **({"now": now} if now else {}))


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


async def mint_code(core: Core, *, client_id: str = "web-rp",
                    redirect_uri: str = "https://rp.example.test/cb",
                    scopes: Sequence[str] = ("openid", "profile", "email", "offline_access"),
                    challenge: Optional[str] = None, nonce: str = "n-0S6",
                    claims: Optional[dict] = None, identity: Identity = ALICE,
                    auth_time: Optional[int] = None) -> str:
    """What the authorize service does after sign-in and consent: a code in Redis (for a
    sign-in 5 s ago unless `auth_time` says when)."""
    grant = Grant(client_id=client_id, identity=identity, scopes=list(scopes),
                  redirect_uri=redirect_uri, nonce=nonce, claims=claims,
                  code_challenge=challenge or "", code_challenge_method="S256" if challenge else "",
                  auth_time=int(core.now()) - 5 if auth_time is None else auth_time,
                  sid="sid-1", created=int(core.now()))
    return await core.store.put_code(grant.to_record(), core.settings.code_expiration)


def startup_problems(tmp_path, redis_url, extra_registry: str = "",
                     extra_args: tuple = ()) -> list:
    """What the start-up (`Core.from_settings`) refuses with this registry and flags."""
    from shared.config import StartupError
    state = make_state(tmp_path / "state", registry=REGISTRY + extra_registry)
    try:
        core = Core.from_settings(settings_for("authorize", state, redis_url, extra_args))
    except StartupError as err:
        return err.problems
    del core
    return []
