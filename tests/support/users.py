"""Users-file entries and writing the file as an operator's tool would."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

import yaml


def cheap_hash(password: str) -> str:
    """A users-file scrypt hash at the backend's lowest accepted cost (n=2^10), so that
    tests making dozens of sign-ins stay fast; verification is the real code path."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 10, r=8, p=1, dklen=32)
    return f"scrypt$10$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_users(path, entries) -> None:
    """Replace the users file (new inode: the backend reloads it at its next lookup)."""
    tmp = str(path) + ".new"
    with open(tmp, "w") as stream:
        stream.write(yaml.safe_dump({"users": entries}))
    os.replace(tmp, path)


ALICE_ENTRY = {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
               "email": "alice@example.test", "email_verified": True, "id": 1001,
               "uuid": "u-alice"}
BOB_ENTRY = {"username": "bob", "password": cheap_hash("builder"), "name": "Bob",
             "email": "bob@example.test", "id": 1002, "uuid": "u-bob"}


def _token_alice() -> dict:
    from shared.users.passwords import hash_password
    from tests.support.op import ALICE
    return {"username": ALICE.username, "password": hash_password("alice-password"),
            "name": ALICE.name, "given_name": ALICE.given_name,
            "family_name": ALICE.family_name, "email": ALICE.email, "email_verified": True,
            "id": ALICE.numeric_id, "uuid": ALICE.uuid}


# tests.support.op.ALICE (the identity `mint_code` puts into codes) as a users-file entry, so
# that the token service finds her at every grant, as in production
TOKEN_ALICE = _token_alice()


# the identifier tests' users: alice and three more with cheap hashes (many sign-ins)
SIGN_IN_NAMES = [f"user{i}" for i in range(3)]
SIGN_IN_USERS = (
    {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
     "email": "alice@example.test", "email_verified": True, "id": 1001, "uuid": "u-alice"},
    *({"username": u, "password": cheap_hash("pw-" + u), "id": 2000 + i, "uuid": f"u-{u}"}
      for i, u in enumerate(SIGN_IN_NAMES)))
