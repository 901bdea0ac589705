"""Passwords, CSRF tokens, login rate limiting and security headers for the labeling app.

- Passwords: Argon2id (argon2-cffi, OWASP's first choice); an unknown user name costs the same verification, so
  timing does not tell which names exist.
- CSRF: a synchronizer token kept in the signed session cookie and echoed by every form (OWASP CSRF cheat sheet);
  the session cookie is also SameSite=Strict.
- Login: failed attempts are limited per (client address, user name) and per client address with a moving window
  (the ``limits`` library).
- Headers: a Content-Security-Policy without inline script, so even a missed escape cannot run a script.
"""

from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; a missing user (``None``) is checked against a dummy hash and fails."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def csrf_token(session: dict) -> str:
    """The session's CSRF token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(session: dict, submitted: str | None) -> bool:
    """Whether a form's token is the session's (constant-time comparison)."""
    expected = session.get("csrf")
    return bool(expected and submitted) and hmac.compare_digest(expected, submitted)


class LoginLimiter:
    """Failed logins allowed per (address, name) and per address, e.g. ``"5/minute"`` and ``"20/minute"``."""

    def __init__(self, per_user: str = "5/minute", per_address: str = "20/minute"):
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_user, self.per_address = parse(per_user), parse(per_address)

    def blocked(self, address: str, name: str) -> bool:
        return not (self.limiter.test(self.per_user, address, name) and self.limiter.test(self.per_address, address))

    def failed(self, address: str, name: str) -> None:
        self.limiter.hit(self.per_user, address, name)
        self.limiter.hit(self.per_address, address)

    def retry_after(self, address: str, name: str) -> int:
        """Seconds until the next attempt is allowed."""
        import time

        resets = [self.limiter.get_window_stats(self.per_user, address, name).reset_time,
                  self.limiter.get_window_stats(self.per_address, address).reset_time]
        return max(1, int(max(resets) - time.time()) + 1)
