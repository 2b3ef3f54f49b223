"""What counts as an id_token_hint: our ID tokens, never an access token or a signed userinfo
answer (shared/tokens.py `open_id_token_hint`, access-token validation)."""

from __future__ import annotations

import pytest

from shared.identity import Identity
from shared.tokens import TokenError
from tests.support.clients import ODD_ORIGIN_REGISTRY
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.op import ISSUER
from tests.support.users import ALICE_ENTRY, BOB_ENTRY


def test_open_id_token_hint_refuses_access_tokens_and_keeps_id_tokens(core):  # noqa: F811
    alice = Identity(raw_sub="alice", backend="identifier-users", username="alice")
    access = core.tokens.access_token(client_id="trusted-rp", identity=alice, scopes=["openid"],
                                      family="f").token
    with pytest.raises(TokenError, match="access token"):
        core.tokens.open_id_token_hint(access)
    id_token = core.tokens.id_token(client_id="trusted-rp", identity=alice, nonce="n")
    assert core.tokens.open_id_token_hint(id_token)["sub"] == alice.sub


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
def test_our_validation_refuses_the_forged_payload_of_the_old_code(core):
    """Even the payload reproduction 01 got from the old code (kc.isAccessToken, kc.identity,
    no exp) is refused by our own validation: an access token has an `exp`."""
    forged = core.tokens.sign({"sub": "x", "iss": ISSUER, "aud": "web-rp", "jti": "j",
                               "kc.isAccessToken": True, "kc.identity": {"kc.i.id": "VICTIM"},
                               "kc.authorizedScopes": ["openid"]})
    with pytest.raises(TokenError, match="exp missing"):
        core.tokens.validate_access_token(forged)
