"""API tokens: creation (the secret is returned once), bearer authentication, revocation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from accounts.models import ApiToken

TOKEN_PREFIX = "mocr_"  # noqa: S105 - a public marker, not a secret
# Writing last_used_at on every request would turn each API call into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: ApiToken
    secret: str


def token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    kind: str = ApiToken.Kind.PERSONAL,
    expires_at: datetime | None = None,
) -> IssuedToken:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name[:100],
        kind=kind,
        prefix=secret[:12],
        digest=token_digest(secret),
        expires_at=expires_at,
    )
    return IssuedToken(token=token, secret=secret)


async def atoken_authenticate(secret: str) -> AbstractBaseUser | None:
    """The active user owning the active token ``secret``, or ``None``."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    try:
        token = await ApiToken.objects.select_related("user").aget(digest=token_digest(secret))
    except ApiToken.DoesNotExist:
        return None
    now = timezone.now()
    if not token.is_active(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        await ApiToken.objects.filter(pk=token.pk).aupdate(last_used_at=now)
    return token.user


def token_revoke(*, user: AbstractBaseUser, token_id: int) -> bool:
    """Revoke one of ``user``'s tokens; ``False`` when it is not theirs or already revoked."""
    updated = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    return updated == 1
