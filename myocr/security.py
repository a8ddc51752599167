"""Security headers Django does not set.

``SecurityHeadersMiddleware`` adds ``Content-Security-Policy`` and ``Permissions-Policy`` to every response
(``settings.CONTENT_SECURITY_POLICY``, ``settings.PERMISSIONS_POLICY``). Django's ``SecurityMiddleware`` already
sends HSTS, ``X-Content-Type-Options``, ``Referrer-Policy`` and ``Cross-Origin-Opener-Policy``; the clickjacking
middleware ``X-Frame-Options``. The middleware is sync- and async-capable and never touches a response body, so it
costs one dictionary lookup per response and no thread hop under ASGI.

A deploy check (``manage.py check --deploy``) warns when the policy is empty or allows inline code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core import checks
from django.http import HttpRequest, HttpResponseBase

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
