"""Django's built-in middleware, with their hooks run inline under ASGI.

Django's own middleware classes are ``MiddlewareMixin`` subclasses: under ASGI each of their hooks runs in a
worker thread through ``sync_to_async``, two thread hops per middleware per request, about 2.5 ms of CPU for the
standard stack on this project's machines. Their hooks do no blocking I/O except saving a session, so these
subclasses run them inline on the event loop and move only a session save to a thread. They remain subclasses
of Django's classes.

Measured with ``python -m bench.middleware`` (CPU per request, this stack against Django's own classes): 0.40 for
an API call with a token, 0.63 for a page with a session and CSRF, 0.70 for an API 404 — 1.9 to 2.4 ms saved.

Django's deploy checks (``manage.py check --deploy``) look for its security, CSRF and clickjacking middleware by
dotted path, so they report these missing (W001–W003, silenced in settings) and skip every check that depends on
them: HSTS, SSL redirect, ``nosniff``, ``X-Frame-Options: DENY``, secure CSRF cookie.
``check_inline_middleware_deploy`` runs those checks as if the subclasses were Django's own classes and reports
what they find under ``myocr.`` ids (registered by the ``myocr`` app).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core import checks
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, locale, security
from django.utils.module_loading import import_string


class InlineHooks:
    """Replaces ``MiddlewareMixin.__acall__``: call the hooks directly instead of through ``sync_to_async``."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = await self.aprocess_response(request, response)
        return response

    async def aprocess_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return self.process_response(request, response)


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineHooks, sessions.SessionMiddleware):
    """Saving the session touches the database: that hook goes to a thread, but only for requests that used
    the session at all. API requests and static files never do and stay inline."""

    async def aprocess_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        session = getattr(request, "session", None)
        if session is not None and session.accessed:
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)


class LocaleMiddleware(InlineHooks, locale.LocaleMiddleware):
    pass


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooks, csrf.CsrfViewMiddleware):
    async def process_view(self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any) -> Any:
        # Django would run a synchronous process_view in a thread; this one only reads the request.
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooks, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineHooks, messages.MessageMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


# --- deploy checks ----------------------------------------------------------------------------------------

DJANGO_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
)


def as_django_middleware(middleware: list[str]) -> list[str]:
    """``middleware`` with each subclass of one of Django's security middleware replaced by Django's path."""
    bases = [(path, import_string(path)) for path in DJANGO_MIDDLEWARE]
    names = []
    for path in middleware:
        try:
            cls = import_string(path)
        except ImportError:
            names.append(path)
            continue
        names.append(
            next((base_path for base_path, base in bases if isinstance(cls, type) and issubclass(cls, base)), path)
        )
    return names


@checks.register(checks.Tags.security, deploy=True)
def check_inline_middleware_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's middleware-dependent deploy checks, run against this project's subclasses of that middleware."""
    from django.core.checks.security import base, csrf
    from django.test.utils import override_settings

    equivalent = as_django_middleware(list(settings.MIDDLEWARE))
    if equivalent == list(settings.MIDDLEWARE):
        return []  # Django finds its own middleware and runs these checks itself
    django_checks = (
        base.check_security_middleware,
        base.check_xframe_options_middleware,
        base.check_sts,
        base.check_sts_include_subdomains,
        base.check_sts_preload,
        base.check_content_type_nosniff,
        base.check_ssl_redirect,
        base.check_xframe_deny,
        base.check_referrer_policy,
        base.check_cross_origin_opener_policy,
        csrf.check_csrf_middleware,
        csrf.check_csrf_cookie_secure,
    )
    found: list[checks.CheckMessage] = []
    with override_settings(MIDDLEWARE=equivalent):
        for check in django_checks:
            found.extend(check(app_configs))
    return [
        type(message)(message.msg, hint=message.hint, obj=message.obj, id=f"myocr.{message.id}") for message in found
    ]
