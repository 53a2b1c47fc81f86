"""Users: SCRAM credentials in ``DATA/meta/users.json``, checked by every door.

Only SCRAM credentials are stored (RFC 5802/7677, as Kafka keeps them in its
metadata): per user and mechanism (SCRAM-SHA-256, SCRAM-SHA-512) a random
salt, an iteration count, ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))``
and ``ServerKey = HMAC(SaltedPassword, "Server Key")``. Never the password:
a PLAIN login (Kafka SASL/PLAIN, MQTT CONNECT, HTTP Basic) is checked by
deriving the salted password again with the stored salt and iterations and
comparing StoredKeys (``verify_plain``).

The file is replaced atomically under a lock file (``users.json.lock``) by
whoever changes it: ``umlog users`` on a data dir, or the server answering
AlterUserScramCredentials. A running server looks at the file's identity
(mtime, size, inode) before each authentication and re-reads it when it
changed, so a change needs no restart.

PLAIN checks cost a key derivation (4096 iterations and more); HTTP Basic
sends the password with every request, so a successful check is remembered
(keyed by an HMAC of user and password under a per-process random key) until
the user's credentials change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from typing import Any

__all__ = ["MECHANISMS", "UserStore", "scram_credential", "credential_from_salted", "valid_user_name",
           "DEFAULT_ITERATIONS", "MIN_ITERATIONS"]

FILE_NAME = "users.json"
# mechanism -> (hashlib name, Kafka's ScramMechanism code)
MECHANISMS = {"SCRAM-SHA-256": ("sha256", 1), "SCRAM-SHA-512": ("sha512", 2)}
MECHANISM_BY_CODE = {code: name for name, (_, code) in MECHANISMS.items()}
DEFAULT_ITERATIONS = 8192
MIN_ITERATIONS = 4096  # Kafka's minimum for SCRAM
MAX_ITERATIONS = 16384  # Kafka's maximum


def valid_user_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 256 and name.isprintable() and ":" not in name


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def credential_from_salted(mechanism: str, salt: bytes, iterations: int, salted: bytes) -> dict[str, Any]:
    """The stored form of a SCRAM credential from its salted password (what
    AlterUserScramCredentials sends)."""
    h = MECHANISMS[mechanism][0]
    client_key = hmac.new(salted, b"Client Key", h).digest()
    return {"salt": _b64(salt), "iterations": iterations,
            "stored_key": _b64(hashlib.new(h, client_key).digest()),
            "server_key": _b64(hmac.new(salted, b"Server Key", h).digest())}


def scram_credential(mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS,
                     salt: bytes | None = None) -> dict[str, Any]:
    """A new SCRAM credential for ``password`` (random salt)."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    h = MECHANISMS[mechanism][0]
    salted = hashlib.pbkdf2_hmac(h, password.encode(), salt, iterations)
    return credential_from_salted(mechanism, salt, iterations, salted)


class UserStore:
    """The users of one data dir (see the module docstring). Not thread-safe
    within a process; safe across processes (lock file, atomic replace)."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "meta", FILE_NAME)
        self._stamp: tuple | None = None
        self._users: dict[str, dict[str, dict[str, Any]]] = {}
        self._ok: set[bytes] = set()  # remembered PLAIN successes (HMAC digests)
        self._key = secrets.token_bytes(32)
        #: fn(added, removed, changed) after a re-read found changes made elsewhere
        self.on_change: Any = None

    # --- reading -------------------------------------------------------------------------

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        old, old_stamp = self._users, self._stamp
        self._users = self._read()
        self._stamp = stamp
        self._ok.clear()
        if self.on_change is not None and old_stamp is not None:
            added = sorted(set(self._users) - set(old))
            removed = sorted(set(old) - set(self._users))
            changed = sorted(u for u in set(old) & set(self._users) if old[u] != self._users[u])
            if added or removed or changed:
                self.on_change(added, removed, changed)
        return True

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return {}
        users = data.get("users", {}) if isinstance(data, dict) else {}
        return {u: dict(m) for u, m in users.items() if isinstance(m, dict)}

    def users(self) -> dict[str, dict[str, dict[str, Any]]]:
        """user -> mechanism -> stored credential (salt, iterations, keys)."""
        self.refresh()
        return self._users

    def lookup(self, user: str, mechanism: str) -> tuple[bytes, bytes, bytes, int] | None:
        """(salt, stored_key, server_key, iterations) for a SCRAM server, or None."""
        c = self.users().get(user, {}).get(mechanism)
        if c is None:
            return None
        return (base64.b64decode(c["salt"]), base64.b64decode(c["stored_key"]),
                base64.b64decode(c["server_key"]), int(c["iterations"]))

    def verify_plain(self, user: str, password: str) -> bool:
        """Does ``password`` match ``user``'s stored SCRAM credential?"""
        creds = self.users().get(user)
        if not creds or not isinstance(password, str):
            return False
        memo = hmac.new(self._key, user.encode() + b"\0" + password.encode(), "sha256").digest()
        if memo in self._ok:
            return True
        mech = "SCRAM-SHA-256" if "SCRAM-SHA-256" in creds else next(iter(creds))
        c = creds[mech]
        h = MECHANISMS[mech][0]
        try:
            salted = hashlib.pbkdf2_hmac(h, password.encode(), base64.b64decode(c["salt"]), int(c["iterations"]))
        except (KeyError, ValueError, TypeError):
            return False
        stored = hashlib.new(h, hmac.new(salted, b"Client Key", h).digest()).digest()
        if hmac.compare_digest(stored, base64.b64decode(c["stored_key"])):
            if len(self._ok) > 10_000:
                self._ok.clear()
            self._ok.add(memo)
            return True
        return False

    # --- writing -------------------------------------------------------------------------

    def _locked(self):
        from umlog.log.files import file_lock

        return file_lock(self.path)

    def change(self, fn) -> Any:
        """Read, ``fn(users)`` (may change the dict in place, or raise to leave the
        file alone), write atomically; returns what ``fn`` returned."""
        from umlog.log.files import fsync_dir, write_all

        with self._locked():
            users = self._read()
            result = fn(users)
            tmp = self.path + ".tmp"
            data = json.dumps({"version": 1, "users": users}, indent=1, sort_keys=True).encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(os.path.dirname(self.path))
        on_change, self.on_change = self.on_change, None  # our own change: not reported as made elsewhere
        try:
            self.refresh()
        finally:
            self.on_change = on_change
        return result

    def set_password(self, user: str, password: str, mechanisms=tuple(MECHANISMS),
                     iterations: int = DEFAULT_ITERATIONS) -> None:
        if not valid_user_name(user):
            raise ValueError(f"bad user name {user!r} (1-256 printable characters, no ':')")
        if not password:
            raise ValueError("the password is empty")

        def fn(users):
            users[user] = {m: scram_credential(m, password, iterations) for m in mechanisms}
        self.change(fn)

    def set_credential(self, user: str, mechanism: str, credential: dict[str, Any]) -> None:
        def fn(users):
            users.setdefault(user, {})[mechanism] = credential
        self.change(fn)

    def delete_credential(self, user: str, mechanism: str) -> bool:
        def fn(users):
            creds = users.get(user)
            if not creds or mechanism not in creds:
                return False
            del creds[mechanism]
            if not creds:
                del users[user]
            return True
        return self.change(fn)

    def remove(self, user: str) -> bool:
        return self.change(lambda users: users.pop(user, None) is not None)
