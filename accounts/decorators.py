"""Access to the browser pages: the signed-in user, or the shared ``anonymous`` user when auth is off."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from accounts.authentication import anonymous_user_of


def page_owner_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Give the view ``request.owner``: the signed-in user; with ``AUTH_ENABLED=false`` and nobody signed in,
    the ``anonymous`` user the API uses too. Otherwise redirect to the login page. Works on sync and async views.
    """
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = await request.auser()
            if not user.is_authenticated:
                if settings.AUTH_ENABLED:
                    return redirect_to_login(request.get_full_path())
                user = await anonymous_user_of(request)
            request.owner = user
            return await view(request, *args, **kwargs)

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            if settings.AUTH_ENABLED:
                return redirect_to_login(request.get_full_path())
            user = async_to_sync(anonymous_user_of)(request)
        request.owner = user
        return view(request, *args, **kwargs)

    return wrapper
