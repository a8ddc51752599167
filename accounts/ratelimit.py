"""Brute-force limits on signing in and registering, counted in Django's cache.

- Failed sign-ins (the login form, the admin's login form, ``POST /api/auth/token``) are counted per user name and
  client address (``OCR_LOGIN_MAX_FAILURES``) and per client address over all user names
  (``OCR_LOGIN_MAX_FAILURES_PER_IP``, against password spraying), in fixed windows of
  ``OCR_LOGIN_WINDOW_SECONDS``. Past either limit, sign-in attempts from that address are refused with 429 and
  ``Retry-After`` until the window ends, without checking the password (no hashing work for the attacker to cause).
  A successful sign-in clears the count of that user name and address.
- Registrations (form and API) are counted per client address (``OCR_REGISTER_MAX_PER_IP`` per
  ``OCR_REGISTER_WINDOW_SECONDS``).

The counters live in the default cache: per process with the local-memory cache, shared by every process with
Redis (``REDIS_URL``). The client address is ``REMOTE_ADDR``; behind a proxy, run Daphne with ``--proxy-headers``
so that it is the client's and not the proxy's. Keys hold digests, never a raw user name.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.http import HttpRequest

from myocr.http import ApiError
from ocr.config import ocr_config
from ocr.events import ErrorCode

KEY_PREFIX = "myocr:rl"


class RateLimited(ApiError):
    status = 429
    code = ErrorCode.TOO_MANY_ATTEMPTS

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Window:
    """A fixed window of ``seconds`` allowing ``limit`` events per identity."""

    name: str
    limit: int
    seconds: int

    def key(self, identity: str, now: float) -> str:
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{KEY_PREFIX}:{self.name}:{int(now // self.seconds)}:{digest}"

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.seconds - now % self.seconds))


def login_windows() -> tuple[Window, Window]:
    seconds = ocr_config().login_window_seconds
    return (
        Window("login-user", ocr_config().login_max_failures, seconds),
        Window("login-ip", ocr_config().login_max_failures_per_ip, seconds),
    )


def register_window() -> Window:
    return Window("register", ocr_config().register_max_per_ip, ocr_config().register_window_seconds)


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def _login_identities(request: HttpRequest, username: str) -> tuple[str, str]:
    address = client_address(request)
    return f"{address}\x00{username.strip().casefold()}", address


def _increment(key: str, seconds: int) -> int:
    # ``add`` only creates the counter; ``incr`` is atomic in Redis and under the local-memory cache's lock.
    cache.add(key, 0, timeout=seconds + 1)
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.add(key, 1, timeout=seconds + 1)
        return 1


def login_retry_after(request: HttpRequest, username: str) -> int | None:
    """Seconds until ``username`` may try to sign in again from this address, or ``None`` if it may now."""
    now = time.time()
    pairs = list(zip(login_windows(), _login_identities(request, username), strict=True))
    counts = cache.get_many([window.key(identity, now) for window, identity in pairs])
    blocked = [window for window, identity in pairs if counts.get(window.key(identity, now), 0) >= window.limit]
    return max((window.retry_after(now) for window in blocked), default=None)


def login_failed(request: HttpRequest, username: str) -> None:
    now = time.time()
    for window, identity in zip(login_windows(), _login_identities(request, username), strict=True):
        _increment(window.key(identity, now), window.seconds)


def login_succeeded(request: HttpRequest, username: str) -> None:
    window = login_windows()[0]
    cache.delete(window.key(_login_identities(request, username)[0], time.time()))


def register_retry_after(request: HttpRequest) -> int | None:
    """Count a registration attempt from this address; seconds to wait if it is over the limit, else ``None``."""
    now = time.time()
    window = register_window()
    if _increment(window.key(client_address(request), now), window.seconds) > window.limit:
        return window.retry_after(now)
    return None


alogin_retry_after = sync_to_async(login_retry_after, thread_sensitive=False)
alogin_failed = sync_to_async(login_failed, thread_sensitive=False)
alogin_succeeded = sync_to_async(login_succeeded, thread_sensitive=False)
aregister_retry_after = sync_to_async(register_retry_after, thread_sensitive=False)


def too_many_sign_ins(retry_after: int) -> RateLimited:
    minutes = max(1, math.ceil(retry_after / 60))
    return RateLimited(
        f"Too many failed sign-ins from this address. Try again in {minutes} minute(s).", retry_after=retry_after
    )


def too_many_registrations(retry_after: int) -> RateLimited:
    minutes = max(1, math.ceil(retry_after / 60))
    return RateLimited(
        f"Too many registrations from this address. Try again in {minutes} minute(s).", retry_after=retry_after
    )
