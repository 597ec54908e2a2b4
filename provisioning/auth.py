"""Admin password (salted scrypt), session tokens and login throttling."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porch.fsutil import atomic_write

PASSWORD_FILE = "admin.json"
MIN_PASSWORD = 8
MAX_PASSWORD = 128
# scrypt cost: ~16 MiB and tens of ms on a desktop, a few hundred on a Pi Zero 2 W.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
TOKEN_TTL = 12 * 3600.0
MAX_TOKENS = 32


class PasswordError(ValueError):
    """A password that cannot be stored (too short, too long, not text)."""


def check_password_rules(password: object) -> str:
    if not isinstance(password, str):
        raise PasswordError("password: must be a string")
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"password: must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"password: must be at most {MAX_PASSWORD} characters")
    return password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=64 * 1024 * 1024
    )


class PasswordStore:
    """The admin password as a salted scrypt hash in the state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PASSWORD_FILE

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self, password: str) -> None:
        check_password_rules(password)
        salt = os.urandom(16)
        record = {
            "kdf": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": salt.hex(),
            "hash": _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN).hex(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, (json.dumps(record) + "\n").encode(), mode=0o600)

    def verify(self, password: str) -> bool:
        try:
            record = json.loads(self.path.read_text())
            salt = bytes.fromhex(record["salt"])
            expected = bytes.fromhex(record["hash"])
            n, r, p = int(record["n"]), int(record["r"]), int(record["p"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        actual = _scrypt(password, salt, n, r, p, len(expected))
        return hmac.compare_digest(actual, expected)


@dataclass
class Sessions:
    """Random bearer tokens that expire; kept in memory (a reboot logs everyone out)."""

    ttl: float = TOKEN_TTL
    clock: Callable[[], float] = time.monotonic
    _tokens: dict[str, float] = field(default_factory=dict)

    def issue(self) -> str:
        now = self.clock()
        self._expire(now)
        while len(self._tokens) >= MAX_TOKENS:
            oldest = min(self._tokens, key=self._tokens.__getitem__)
            del self._tokens[oldest]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + self.ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        now = self.clock()
        self._expire(now)
        return any(hmac.compare_digest(known, token) for known in self._tokens)

    def revoke_all(self) -> None:
        self._tokens.clear()

    def _expire(self, now: float) -> None:
        for token in [t for t, expiry in self._tokens.items() if expiry <= now]:
            del self._tokens[token]


@dataclass
class LoginThrottle:
    """Failed logins double the wait before the next attempt from that address (cap 60 s).

    Attempts during the wait are refused without checking the password, so a
    guesser gets at most a handful of tries per minute.
    """

    base: float = 1.0
    cap: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def retry_after(self, address: str) -> float:
        _count, until = self._failures.get(address, (0, 0.0))
        return max(0.0, until - self.clock())

    def failed(self, address: str) -> float:
        count, _ = self._failures.get(address, (0, 0.0))
        count += 1
        wait = min(self.cap, self.base * 2 ** (count - 1))
        self._failures[address] = (count, self.clock() + wait)
        if len(self._failures) > 1024:  # bounded memory under a spray of addresses
            oldest = min(self._failures, key=lambda a: self._failures[a][1])
            del self._failures[oldest]
        return wait

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def passwd_cli(state_dir: Path) -> int:
    """`porch passwd`: read the new admin password from stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != password:
            print("porch passwd: passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        PasswordStore(state_dir).set(password)
    except PasswordError as exc:
        print(f"porch passwd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"porch passwd: cannot write {state_dir / PASSWORD_FILE}: {exc}", file=sys.stderr)
        return 2
    print(f"admin password saved in {state_dir / PASSWORD_FILE}")
    return 0
