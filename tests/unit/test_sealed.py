"""Sealing under the encryption secret, bound to a purpose and an expiry (shared/sealed.py)."""

from __future__ import annotations

import base64
import logging

import pytest

from shared.keys import KeysUnavailable
from shared.sealed import MAX_SEALED, Sealer, SealError, SecretError, load_secret, new_secret

SECRET = bytes(range(32))


OTHER = bytes(range(1, 33))


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_round_trip_returns_the_payload():
    sealer = Sealer(SECRET)
    value = {"user": "alice", "n": [1, 2], "ok": True}
    assert sealer.unseal("logon", sealer.seal("logon", value, 60)) == value


def test_value_sealed_for_one_purpose_does_not_open_for_another():
    sealer = Sealer(SECRET)
    token = sealer.seal("logon", {"user": "alice"}, 60)
    with pytest.raises(SealError) as info:
        sealer.unseal("consent", token)
    assert info.value.reason == "invalid"


def test_every_flipped_byte_is_detected():
    sealer = Sealer(SECRET)
    raw = bytearray(base64.urlsafe_b64decode(sealer.seal("p", {"a": 1}, 60) + "=="))
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        token = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(SealError):
            sealer.unseal("p", token)


def test_truncated_value_is_refused():
    sealer = Sealer(SECRET)
    token = sealer.seal("p", {"a": 1}, 60)
    for cut in (1, 10, len(token) - 5):
        with pytest.raises(SealError):
            sealer.unseal("p", token[:cut])


def test_other_secret_cannot_open_but_previous_secret_rotation_can():
    old = Sealer(OTHER)
    token = old.seal("p", {"a": 1}, 60)
    with pytest.raises(SealError) as info:
        Sealer(SECRET).unseal("p", token)
    assert info.value.reason == "invalid"
    assert Sealer(SECRET, previous=[OTHER]).unseal("p", token) == {"a": 1}
    new_token = Sealer(SECRET, previous=[OTHER]).seal("p", {"b": 2}, 60)
    with pytest.raises(SealError):
        old.unseal("p", new_token)


def test_expiry_is_enforced_with_the_injected_clock():
    clock = Clock()
    sealer = Sealer(SECRET, now=clock)
    token = sealer.seal("p", {"a": 1}, 30)
    clock.t += 29
    assert sealer.unseal("p", token) == {"a": 1}
    clock.t += 1
    with pytest.raises(SealError) as info:
        sealer.unseal("p", token)
    assert info.value.reason == "expired"


def test_oversized_value_is_refused_before_decrypting():
    with pytest.raises(SealError) as info:
        Sealer(SECRET).unseal("p", "A" * (MAX_SEALED + 1))
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("garbage", ["", "!!!!", "a b c", "AAAA", "éé", None, 12, "AQ" * 10])
def test_garbage_is_malformed_or_invalid(garbage):
    with pytest.raises(SealError) as info:
        Sealer(SECRET).unseal("p", garbage)
    assert info.value.reason in ("malformed", "invalid")


def test_two_seals_of_the_same_payload_differ():
    sealer = Sealer(SECRET)
    assert sealer.seal("p", {"a": 1}, 60) != sealer.seal("p", {"a": 1}, 60)


def test_bad_ttl_and_purpose_are_programming_errors():
    sealer = Sealer(SECRET)
    for ttl in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            sealer.seal("p", {}, ttl)
    with pytest.raises(ValueError):
        sealer.seal("", {}, 60)


def test_load_secret_accepts_exactly_32_bytes(tmp_path):
    path = tmp_path / "secret.key"
    path.write_bytes(OTHER)
    assert load_secret(str(path), logger=logging.getLogger("t")) == OTHER


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_secret_refuses_other_lengths_naming_the_length(tmp_path, size):
    path = tmp_path / "secret.key"
    path.write_bytes(b"x" * size)
    with pytest.raises(SecretError) as info:
        load_secret(str(path), logger=logging.getLogger("t"))
    assert f"has {size}" in str(info.value) and "xxxx" not in str(info.value)


def test_load_secret_missing_file(tmp_path):
    with pytest.raises(SecretError, match="cannot read"):
        load_secret(str(tmp_path / "nope"), logger=logging.getLogger("t"))


def test_an_ephemeral_sealer_seals_and_opens_nothing_until_it_has_the_groups_secret():
    """Without --encryption-secret the group shares one secret (shared/ephemeral.py): a
    process's own random one is never used before the group's is confirmed."""
    own, group = new_secret(), new_secret()
    assert len(own) == 32 and own != group
    sealer = Sealer(own, ephemeral=True)
    with pytest.raises(KeysUnavailable):
        sealer.seal("logon", {"a": 1}, 60)
    with pytest.raises(KeysUnavailable):
        sealer.unseal("logon", Sealer(group).seal("logon", {"a": 1}, 60))
    sealer.adopt(group)
    assert sealer.unseal("logon", Sealer(group).seal("logon", {"a": 1}, 60)) == {"a": 1}
    assert Sealer(group).unseal("logon", sealer.seal("logon", {"b": 2}, 60)) == {"b": 2}
    with pytest.raises(SealError):  # the process's own secret is gone
        sealer.unseal("logon", Sealer(own).seal("logon", {"a": 1}, 60))


def test_a_secrets_tag_names_it_without_telling_it():
    secret = new_secret()
    assert Sealer(secret).tag("x") == Sealer(secret).tag("x") != Sealer(new_secret()).tag("x")
    assert Sealer(secret).tag("x") != Sealer(secret).tag("y")
    assert len(Sealer(secret).tag("x")) == 16 and secret.hex()[:16] != Sealer(secret).tag("x")


def test_sealer_refuses_a_short_secret():
    with pytest.raises(SecretError):
        Sealer(b"short")
