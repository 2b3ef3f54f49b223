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


def parse_users(doc: Any, source: str) -> dict[str, dict]:
    """username -> entry; every problem listed in one UsersFileError."""
    entries = (doc or {}).get("users") if isinstance(doc, dict) or doc is None else None
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise UsersFileError(f"{source}: 'users' must be a list")
    problems, users = [], {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str) \
                or not entry["username"]:
            problems.append(f"users[{i}]: username is required")
            continue
        name = entry["username"]
        if name.lower() in users:
            problems.append(f"users[{i}] ({name}): duplicate username")
        if not isinstance(entry.get("password", ""), str):
            problems.append(f"users[{i}] ({name}): password must be a hash string")
        if "id" in entry and (not isinstance(entry["id"], int) or isinstance(entry["id"], bool)):
            problems.append(f"users[{i}] ({name}): id must be a number")
        users[name.lower()] = entry
    if problems:
        raise UsersFileError(f"{source}: " + "; ".join(problems))
    return users


def _identity(entry: dict) -> Identity:
    return Identity(raw_sub=str(entry.get("uuid") or entry["username"]), backend=PROVIDER,
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
        self._by_raw_sub = {}
        for name, identity in self._identities.items():
            self._by_raw_sub.setdefault(identity.raw_sub, name)
        if not initial:
            log.info("users file reloaded: %d user(s)", len(users))


    async def authenticate(self, username: str, password: str) -> Optional[Identity]:
        self._refresh()
        entry = self._users.get((username or "").lower())
        usable = entry is not None and not entry.get("disabled") and entry.get("password")
        encoded = entry["password"] if usable else DUMMY_HASH
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_password, password or "", encoded)
        return _identity(entry) if ok and usable and password else None

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
    doc: dict = {"users": []}
    if os.path.exists(args.file):
        with open(args.file, "rb") as stream:
            doc = yaml.safe_load(stream) or {"users": []}
    try:
        users = parse_users(doc, args.file)
    except UsersFileError as err:
        print(err, file=sys.stderr)
        return 2
    if args.command == "list":
        for entry in users.values():
            print(f"{entry['username']}\t{entry.get('id', '')}\t{entry.get('email', '')}")
        return 0
    if not args.username:
        print("a username is required", file=sys.stderr)
        return 2
    entry = users.get(args.username.lower())
    if args.command == "add" and entry is not None:
        print(f"user {args.username} exists (use passwd)", file=sys.stderr)
        return 2
    if args.command == "passwd" and entry is None:
        print(f"no user {args.username}", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    if not password:
        print("empty password refused", file=sys.stderr)
        return 2
    if entry is None:
        next_id = max([u.get("id", 1000) for u in users.values()] + [1000]) + 1
        entry = {"username": args.username, "id": next_id, "uuid": str(uuidlib.uuid4())}
        doc.setdefault("users", []).append(entry)
    for field in ("name", "given_name", "family_name", "email"):
        value = getattr(args, field)
        if value:
            entry[field] = value
    entry["password"] = hash_password(password)
    _write(args.file, doc)
    print(f"{args.command}: {args.username}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
