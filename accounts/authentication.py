"""Who is calling: the user behind an API token, or, with ``AUTH_ENABLED=false``, the shared ``anonymous`` user
(its limits counted per client address). The pages' session sign-in is Django's (``accounts/decorators.py`` gives
the pages the same ``request.owner``)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest

from accounts import ratelimit
from accounts.limits import for_client_address
from accounts.tokens import atoken_authenticate
from myocr.http import not_authenticated


async def authenticate_request(request: HttpRequest) -> AbstractBaseUser:
    """The user behind the request's bearer token; with ``AUTH_ENABLED=false``, the ``anonymous`` user when
    no valid token is given."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    user = None
    if scheme.lower() == "bearer" and secret.strip():
        user = await atoken_authenticate(secret.strip())
        if user is None and settings.AUTH_ENABLED:
            raise not_authenticated("The token is invalid, expired or revoked.")
    if user is None:
        if settings.AUTH_ENABLED:
            raise not_authenticated("Send an API token: 'Authorization: Bearer <token>'.")
        user = await anonymous_user_of(request)
    return user


async def anonymous_user_of(request: HttpRequest) -> AbstractBaseUser:
    """The ``anonymous`` user, its job limits counted per client address of ``request`` (as the sign-in limits
    are): with authentication off, one shared user must not mean one limit for the whole service."""
    return for_client_address(await anonymous_user(), ratelimit.client_address(request))


@sync_to_async
def anonymous_user() -> AbstractBaseUser:
    """The shared user that owns requests when authentication is off, as in the original My OCR."""
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=settings.ANONYMOUS_USERNAME, defaults={"is_active": True})
    if user.has_usable_password():
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
