"""Django's built-in middleware, with their hooks run inline under ASGI.

Django's own middleware classes are ``MiddlewareMixin`` subclasses: under ASGI each of their hooks runs in a
worker thread through ``sync_to_async``, two thread hops per middleware per request, about 2.5 ms of CPU for the
standard stack on this project's machines. Their hooks do no blocking I/O except saving a session, so these
subclasses run them inline on the event loop and move only a session save to a thread. They remain subclasses
of Django's classes, so Django's system checks and ``MIDDLEWARE`` lookups still recognise them.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, locale, security


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
