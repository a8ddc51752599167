"""Security headers Django does not set, and Django's deploy checks made to see this project's middleware.

``SecurityHeadersMiddleware`` adds ``Content-Security-Policy`` and ``Permissions-Policy`` to every response
(``settings.CONTENT_SECURITY_POLICY``, ``settings.PERMISSIONS_POLICY``). Django's ``SecurityMiddleware`` already
sends HSTS, ``X-Content-Type-Options``, ``Referrer-Policy`` and ``Cross-Origin-Opener-Policy``; the clickjacking
middleware ``X-Frame-Options``. The middleware is sync- and async-capable and never touches a response body, so it
costs one dictionary lookup per response and no thread hop under ASGI.

Django's deploy checks (``manage.py check --deploy``) look for its security, CSRF and clickjacking middleware by
dotted path. This project runs subclasses of them under other paths (``myocr/middleware.py``), so Django would
report them missing (W001–W003, silenced in settings) and then skip every check that depends on them: HSTS, SSL
redirect, ``nosniff``, ``X-Frame-Options: DENY``, secure CSRF cookie. ``check_inline_middleware_deploy`` runs
those checks as if the subclasses were Django's own classes, and reports what they find under ``myocr.`` ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core import checks
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

CSP_HEADER = "Content-Security-Policy"


class SecurityHeadersMiddleware:
    """Add the Content-Security-Policy and Permissions-Policy headers (a view may set its own)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.headers = [
            (name, value)
            for name, value in (
                (CSP_HEADER, settings.CONTENT_SECURITY_POLICY),
                ("Permissions-Policy", settings.PERMISSIONS_POLICY),
            )
            if value
        ]
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return self.add_headers(self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return self.add_headers(await self.get_response(request))

    def add_headers(self, response: HttpResponseBase) -> HttpResponseBase:
        for name, value in self.headers:
            if name not in response:
                response[name] = value
        return response


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


@checks.register(checks.Tags.security, deploy=True)
def check_content_security_policy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    policy = settings.CONTENT_SECURITY_POLICY
    if not policy:
        return [checks.Warning("CONTENT_SECURITY_POLICY is empty: pages are served without a CSP.", id="myocr.W101")]
    if "'unsafe-inline'" in policy or "'unsafe-eval'" in policy:
        return [
            checks.Warning(
                "CONTENT_SECURITY_POLICY allows inline scripts or styles ('unsafe-inline' or 'unsafe-eval').",
                hint="The pages need neither; remove them.",
                id="myocr.W102",
            )
        ]
    return []
