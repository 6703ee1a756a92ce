"""Who may read and who may write.

- **Reviewers** (every write): names with a token each, kept *hashed* in a secrets file that
  lives outside the repository (``serve.reviewers_file`` or ``LOOKALIKE_REVIEWERS_FILE``), one
  ``name:sha256:<hex>`` line per reviewer. ``lookalike reviewer add NAME`` appends a line and
  prints the token once. A reviewer signs in to the review app with name and token (a signed
  session cookie follows), or a tool sends ``Authorization: Bearer <token>``.
- **Readers** of the JSON API: open by default (``serve.read_access: open``); with ``token``,
  requests need ``Authorization: Bearer`` with ``LOOKALIKE_READ_TOKEN`` or a reviewer's token.
- **CSRF**: every form carries a token derived from the session (HMAC), checked on each POST
  made with the cookie; the cookie is ``SameSite=Strict`` and ``HttpOnly``, and a POST whose
  ``Origin`` names another site is refused. Bearer-token requests need no CSRF token: browsers
  never attach that header on their own.

The session key comes from ``LOOKALIKE_SESSION_SECRET`` (set it when several processes serve
behind one address, so that a session signed by one is valid in the others); without it each
process makes its own and sessions end when it restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

READ_TOKEN_ENV = "LOOKALIKE_READ_TOKEN"
REVIEWERS_FILE_ENV = "LOOKALIKE_REVIEWERS_FILE"
SESSION_SECRET_ENV = "LOOKALIKE_SESSION_SECRET"
SESSION_COOKIE = "lookalike_session"
LOGIN_COOKIE = "lookalike_login"
SESSION_SECONDS = 12 * 3600
# Reviewer names are shown and stored: short, printable, no markup or separators.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
MAX_NAME_LENGTH = 64


class AuthError(ValueError):
    """A bad reviewers file or name; the message says which line or character."""


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a plain SHA-256 is enough (no dictionary to slow down).
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not set(name) <= _NAME_CHARS:
        raise AuthError(
            f"reviewer name {name!r}: use 1-{MAX_NAME_LENGTH} of letters, digits and . _ - @"
        )
    return name


@dataclass(frozen=True)
class Reviewers:
    """Reviewer name -> SHA-256 of the token, from the secrets file."""

    hashes: dict[str, str]

    @classmethod
    def from_file(cls, path: Path | None) -> Reviewers:
        if path is None:
            return cls({})
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise AuthError(f"reviewers file {path}: {err.strerror}") from None
        hashes = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, rest = line.partition(":")
            kind, _, digest = rest.partition(":")
            if kind != "sha256" or len(digest) != 64:
                raise AuthError(f"{path}:{number}: expected name:sha256:<64 hex digits>")
            hashes[check_name(name)] = digest.lower()
        return cls(hashes)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def authenticate(self, name: str, token: str) -> str | None:
        """The reviewer's name when the token is theirs, else None (constant-time compare)."""
        expected = self.hashes.get(name)
        given = hash_token(token)
        if expected is None:
            hmac.compare_digest(given, given)  # the same work for unknown names
            return None
        return name if hmac.compare_digest(given, expected) else None

    def by_token(self, token: str) -> str | None:
        given = hash_token(token)
        found = None
        for name, expected in self.hashes.items():
            if hmac.compare_digest(given, expected):
                found = name
        return found


def add_reviewer(path: Path, name: str) -> str:
    """Append ``name`` with a new token to the secrets file (made private); returns the token."""
    check_name(name)
    path = Path(path)
    existing = Reviewers.from_file(path) if path.exists() else Reviewers({})
    if name in existing.hashes:
        raise AuthError(f"{path}: reviewer {name!r} exists; remove the line to replace the token")
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"{name}:sha256:{hash_token(token)}\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return token


class Sessions:
    """Signed session cookies and the CSRF tokens derived from them."""

    def __init__(self, secret: bytes | None = None, max_age: int = SESSION_SECONDS) -> None:
        env = os.environ.get(SESSION_SECRET_ENV)
        self._key = secret or (env.encode("utf-8") if env else secrets.token_bytes(32))
        self.max_age = max_age

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def issue(self, name: str, now: float | None = None) -> str:
        body = f"{base64.urlsafe_b64encode(name.encode()).decode()}.{int(now or time.time())}"
        return f"{body}.{self._sign('session.' + body)}"

    def reviewer(self, cookie: str | None, now: float | None = None) -> str | None:
        """The reviewer a cookie was issued to, if it is ours, intact and not expired."""
        if not cookie or cookie.count(".") != 2:
            return None
        encoded, issued, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(f"session.{encoded}.{issued}")):
            return None
        try:
            if (now or time.time()) - int(issued) > self.max_age:
                return None
            return base64.urlsafe_b64decode(encoded.encode()).decode("utf-8")
        except ValueError:
            return None

    def csrf_token(self, cookie: str) -> str:
        return self._sign("csrf." + cookie)

    def check_csrf(self, cookie: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(cookie), token)

    def login_nonce(self) -> str:
        return secrets.token_urlsafe(16)

    def login_token(self, nonce: str) -> str:
        return self._sign("login." + nonce)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def read_token() -> str | None:
    return os.environ.get(READ_TOKEN_ENV) or None
