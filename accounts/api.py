"""Account endpoints of the JSON API, compatible with the original My OCR."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import aauthenticate
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters

from accounts import ratelimit
from accounts.models import ApiToken
from accounts.services import user_register
from accounts.tokens import token_create
from myocr.http import ApiError, api_endpoint
from ocr.events import ErrorCode
from ocr.selectors import ausage_events, ausage_summary

#: JSON answers write text as UTF-8 (their charset), not as ``\u`` escapes.
UTF8 = {"ensure_ascii": False}


def request_data(request: HttpRequest) -> dict[str, Any]:
    """Fields of a JSON or form-encoded body."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError("The body is not valid JSON.", code=ErrorCode.INVALID_JSON) from None
        if not isinstance(data, dict):
            raise ApiError("The body must be a JSON object.", code=ErrorCode.INVALID_JSON)
        return data
    try:
        return request.POST.dict()
    except MultiPartParserError:
        raise ApiError("The form body could not be read.", code=ErrorCode.BAD_REQUEST) from None


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"'{name}' is required.", code=ErrorCode.INVALID_REQUEST, status=422)
    return value


@sensitive_post_parameters("password")
@api_endpoint(methods=("POST",), auth=False)
async def register(request: HttpRequest) -> HttpResponse:
    if not settings.REGISTRATION_OPEN:
        raise ApiError("Registration is closed on this server.", code=ErrorCode.REGISTRATION_CLOSED, status=403)
    retry_after = await ratelimit.aregister_retry_after(request)
    if retry_after is not None:
        raise ratelimit.too_many_registrations(retry_after)
    data = request_data(request)
    username = _text_field(data, "username").strip()
    password = _text_field(data, "password")
    email = data.get("email") if isinstance(data.get("email"), str) else ""
    try:
        user = await sync_to_async(user_register)(username=username, password=password, email=email)
    except ValidationError as exc:
        raise ApiError(" ".join(exc.messages), code=ErrorCode.INVALID_REGISTRATION, status=422) from None
    return JsonResponse(user_as_dict(user), status=201, json_dumps_params=UTF8)


@sensitive_post_parameters("password")
@api_endpoint(methods=("POST",), auth=False)
async def issue_token(request: HttpRequest) -> HttpResponse:
    """OAuth2 password grant (form fields ``username`` and ``password``; JSON accepted too)."""
    data = request_data(request)
    grant_type = data.get("grant_type")
    if grant_type not in (None, "", "password"):
        raise ApiError("Only grant_type=password is supported.", code=ErrorCode.UNSUPPORTED_GRANT_TYPE)
    username = _text_field(data, "username")
    password = _text_field(data, "password")
    retry_after = await ratelimit.alogin_retry_after(request, username)
    if retry_after is not None:
        raise ratelimit.too_many_sign_ins(retry_after)
    user = await aauthenticate(request, username=username, password=password)
    if user is None:
        await ratelimit.alogin_failed(request, username)
        raise ApiError(
            "Wrong username or password.",
            code=ErrorCode.INVALID_CREDENTIALS,
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    await ratelimit.alogin_succeeded(request, username)
    lifetime = timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    issued = await sync_to_async(token_create)(
        user=user, name="API login", kind=ApiToken.Kind.LOGIN, expires_at=timezone.now() + lifetime
    )
    return JsonResponse(
        {
            "access_token": issued.secret,
            "token_type": "bearer",
            "expires_in": int(lifetime.total_seconds()),
            "expires_at": issued.token.expires_at.isoformat(),
        }
    )


def user_as_dict(user: AbstractBaseUser) -> dict[str, Any]:
    """The original My OCR's user shape (``id``, ``username``, ``created_at``) and a few fields of ours."""
    joined = getattr(user, "date_joined", None)
    return {
        "id": user.pk,
        "username": user.get_username(),
        "created_at": joined.isoformat() if joined else None,
        "email": getattr(user, "email", ""),
        "is_staff": getattr(user, "is_staff", False),
        "date_joined": joined.isoformat() if joined else None,
    }


@api_endpoint(methods=("GET",))
async def me(request: HttpRequest) -> HttpResponse:
    data = user_as_dict(request.owner)
    data["auth_enabled"] = settings.AUTH_ENABLED
    return JsonResponse(data, json_dumps_params=UTF8)


@api_endpoint(methods=("GET",))
async def my_usage(request: HttpRequest) -> HttpResponse:
    events = await ausage_events(owner=request.owner)
    return JsonResponse(events, safe=False, json_dumps_params=UTF8)


@api_endpoint(methods=("GET",))
async def my_usage_summary(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await ausage_summary(owner=request.owner))
