"""The `users` backend: a local YAML users file, the built-in default.

```yaml
users:
  - username: alice
    password: scrypt$15$8$1$...      # python -m shared.users.userfile passwd FILE alice
    name: Alice Example
    given_name: Alice
    family_name: Example
    email: alice@example.com
    email_verified: true
    id: 1001                          # numeric id (scope konnect/id)
    uuid: 7c0e...                     # stable id: the raw subject (scope konnect/uuid)
    disabled: false
```

The file is checked (one `os.stat`) on every call and re-read when it changed, so edits
take effect without a restart; a broken edit keeps the last good version and is logged.
Password checks (scrypt) run in a thread pool: the event loop never waits on them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import tempfile
import unicodedata
import uuid as uuidlib
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Optional

import yaml

from ..identity import Identity
from .base import UserBackend
from .passwords import DUMMY_HASH, hash_password, verify_password

log = logging.getLogger("konnect.users")
PROVIDER = "identifier-users"


class UsersFileError(Exception):
    pass


def username_key(name: str) -> str:
    """The form usernames are compared in: NFC, lower case (then NFC again, as lowering can
    leave a decomposed sequence). `josé` typed as NFC or NFD is one user, `Alice` is `alice`."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).lower())


def raw_sub_of(entry: dict) -> str:
    """The raw subject of an entry: its uuid, else its username (as written)."""
    return str(entry.get("uuid") or entry["username"])


def parse_users(doc: Any, source: str) -> dict[str, dict]:
    """username key (`username_key`) -> entry; every problem listed in one UsersFileError.

    Refused: a top level that is not a mapping; a username that is missing, not a string,
    or has leading or trailing white space; two usernames that are equal after NFC and
    lower-casing; two entries with the same raw subject (uuid, else username): OIDC Core
    §2 makes `sub` locally unique and never reassigned, and userinfo would return the
    other person's claims.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UsersFileError(f"{source}: the top level must be a mapping with a 'users' list, "
                             f"not a {type(doc).__name__}")
    entries = doc.get("users")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise UsersFileError(f"{source}: 'users' must be a list")
    problems, users = [], {}
    owners: dict[str, tuple[int, str]] = {}  # key -> (index, username as written)
    subjects: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str) \
                or not entry["username"].strip():
            problems.append(f"users[{i}]: username is required")
            continue
        name = entry["username"]
        if name != name.strip():
            problems.append(f"users[{i}] ({name!r}): username has leading or trailing white space")
            continue
        key = username_key(name)
        if key in owners:
            first, other = owners[key]
            what = "duplicate username" if other == name else \
                f"duplicate username: {name!a} and {other!a} (users[{first}]) are the same " \
                "name after Unicode NFC normalisation and lower-casing"
            problems.append(f"users[{i}] ({name}): {what}")
        if not isinstance(entry.get("password", ""), str):
            problems.append(f"users[{i}] ({name}): password must be a hash string")
        if "id" in entry and (not isinstance(entry["id"], int) or isinstance(entry["id"], bool)):
            problems.append(f"users[{i}] ({name}): id must be a number")
        raw_sub = raw_sub_of(entry)
        if raw_sub in subjects:
            first, other = subjects[raw_sub]
            problems.append(f"users[{i}] ({name}) and users[{first}] ({other}) have the same "
                            f"subject {raw_sub!r} (uuid, else username): every user needs a "
                            "uuid of their own")
        owners.setdefault(key, (i, name))
        subjects.setdefault(raw_sub, (i, name))
        users[key] = entry
    if problems:
        raise UsersFileError(f"{source}: " + "; ".join(problems))
    return users


def _identity(entry: dict) -> Identity:
    return Identity(raw_sub=raw_sub_of(entry), backend=PROVIDER,
                    username=entry["username"], name=str(entry.get("name") or ""),
                    given_name=str(entry.get("given_name") or ""),
                    family_name=str(entry.get("family_name") or ""),
                    email=str(entry.get("email") or ""),
                    email_verified=entry.get("email_verified") is True,
                    numeric_id=entry.get("id"), uuid=str(entry.get("uuid") or ""))


class UsersFileBackend(UserBackend):
    manager = "users"
    provider = PROVIDER

    def __init__(self, path: str, *, executor: Optional[Executor] = None) -> None:
        self.path = path
        self._stamp: Optional[tuple] = None
        self._users: dict[str, dict] = {}
        self._identities: dict[str, Identity] = {}
        self._by_raw_sub: dict[str, str] = {}
        self._executor = executor or ThreadPoolExecutor(max_workers=2, thread_name_prefix="scrypt")
        self._own_executor = executor is None
        self._refresh(initial=True)

    def _refresh(self, initial: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as err:
            if initial:
                raise UsersFileError(f"{self.path}: cannot read users file ({err.strerror})") from None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, "rb") as stream:
                users = parse_users(yaml.safe_load(stream), self.path)
        except (OSError, yaml.YAMLError, UsersFileError) as err:
            message = err if isinstance(err, UsersFileError) else f"{self.path}: cannot parse users file"
            if initial:
                raise UsersFileError(str(message)) from None
            log.error("users file changed but is broken, keeping the previous version: %s", message)
            self._stamp = stamp
            return
        self._users, self._stamp = users, stamp
        # built once per version of the file: lookups are a dict access, and each
        # Identity (frozen) keeps its computed public subject between requests
        self._identities = {name: _identity(entry) for name, entry in users.items()}
        # parse_users refused any file where two users share a raw subject
        self._by_raw_sub = {identity.raw_sub: name for name, identity in self._identities.items()}
        if not initial:
            log.info("users file reloaded: %d user(s)", len(users))


    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        self._refresh()
        entry = self._users.get(username_key(username or ""))
        usable = entry is not None and not entry.get("disabled") and entry.get("password")
        encoded = entry["password"] if usable else DUMMY_HASH
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_password, password or "", encoded)
        return _identity(entry) if ok and usable and password else None

    async def resolve(self, username: str) -> Optional[Identity]:
        self._refresh()
        key = username_key(username or "")
        entry = self._users.get(key)
        if entry is None or entry.get("disabled"):
            return None
        return self._identities[key]

    async def lookup(self, raw_sub: str) -> Optional[Identity]:
        self._refresh()
        name = self._by_raw_sub.get(raw_sub)
        if name is None or self._users[name].get("disabled"):
            return None
        return self._identities[name]

    async def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False)


def _write(path: str, doc: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".users-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yaml.safe_dump(doc, out, sort_keys=False, allow_unicode=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Optional[list] = None) -> int:
    """`python -m shared.users.userfile add|passwd|list FILE [USERNAME]`."""
    parser = argparse.ArgumentParser(prog="python -m shared.users.userfile")
    parser.add_argument("command", choices=("add", "passwd", "list"))
    parser.add_argument("file")
    parser.add_argument("username", nargs="?")
    for field in ("name", "given-name", "family-name", "email"):
        parser.add_argument(f"--{field}")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    args = parser.parse_args(argv)
    try:
        doc, users = _load_for_cli(args.file)
    except UsersFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "list":
        for entry in users.values():
            print(f"{entry['username']}\t{entry.get('id', '')}\t{entry.get('email', '')}")
        return 0
    if not args.username:
        print("a username is required", file=sys.stderr)
        return 2
    if args.username != args.username.strip():
        print(f"username {args.username!r} has leading or trailing white space", file=sys.stderr)
        return 2
    username = unicodedata.normalize("NFC", args.username)
    entry = users.get(username_key(username))
    if args.command == "add" and entry is not None:
        print(f"user {username} exists (use passwd)", file=sys.stderr)
        return 2
    if args.command == "passwd" and entry is None:
        print(f"no user {username}", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    if not password:
        print("empty password refused", file=sys.stderr)
        return 2
    if entry is None:
        next_id = max([u.get("id", 1000) for u in users.values()] + [1000]) + 1
        entry = {"username": username, "id": next_id, "uuid": str(uuidlib.uuid4())}
        if doc.get("users") is None:
            doc["users"] = []
        doc["users"].append(entry)
    for field in ("name", "given_name", "family_name", "email"):
        value = getattr(args, field)
        if value:
            entry[field] = value
    entry["password"] = hash_password(password)
    try:
        parse_users(doc, args.file)  # never write a file the backend would refuse
    except UsersFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _write(args.file, doc)
    print(f"{args.command}: {username}")
    return 0


def _load_for_cli(path: str) -> tuple[dict, dict[str, dict]]:
    """The document and its users, or one UsersFileError (a one-line message, no traceback)."""
    if not os.path.exists(path):
        return {"users": []}, {}
    try:
        with open(path, "rb") as stream:
            doc = yaml.safe_load(stream)
    except OSError as err:
        raise UsersFileError(f"{path}: cannot read users file ({err.strerror})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise UsersFileError(f"{path}: not valid YAML{at}") from None
    doc = {"users": []} if doc is None else doc
    return doc, parse_users(doc, path)


if __name__ == "__main__":
    sys.exit(main())
