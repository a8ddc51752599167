"""Shared plumbing of the JSON API: errors as ``{"error": {"code", "message"}}`` and the bearer-token guard.

API endpoints are for scripts: CSRF-exempt and authenticated only by the ``Authorization`` header, never by the
session cookie (cookie auth without CSRF would be a hole).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from ocr.events import ErrorCode


class ApiError(Exception):
    """A failure answered with a JSON error body and an HTTP status."""

    status = 400
    code = ErrorCode.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse({"error": error.as_dict()}, status=error.status, json_dumps_params={"ensure_ascii": False})
    for name, value in error.headers.items():
        response[name] = value
    return response


def not_authenticated(message: str) -> ApiError:
    return ApiError(message, code=ErrorCode.NOT_AUTHENTICATED, status=401, headers={"WWW-Authenticate": "Bearer"})


ApiView = Callable[..., Awaitable[HttpResponse]]


def api_endpoint(*, methods: tuple[str, ...], auth: bool = True) -> Callable[[ApiView], ApiView]:
    """Make an async view a JSON API endpoint: method check, bearer auth (the caller in ``request.owner``, as on
    the pages), JSON errors."""

    def decorate(view: ApiView) -> ApiView:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(
                        f"Use {' or '.join(methods)}.",
                        code=ErrorCode.METHOD_NOT_ALLOWED,
                        status=405,
                        headers={"Allow": ", ".join(methods)},
                    )
                if auth:
                    from accounts.authentication import authenticate_request

                    request.owner = await authenticate_request(request)
                return await view(request, *args, **kwargs)
            except ApiError as error:
                return error_response(error)

        return wrapper

    return decorate


# --- error pages of the API -------------------------------------------------------------------------------
# Django answers some failures itself, before or outside a view: an unknown path, a body it refuses to parse,
# a crash. Under /api/ those answers are JSON with the usual error body too: ``ApiErrorsMiddleware`` turns the
# exceptions a view raises into their JSON answer and rewrites any other error answer (Django's HTML pages, its
# DEBUG pages included); ``urls.handler400`` etc. do the same for Django's own error views.

#: Error codes for the statuses Django or the server may answer by themselves.
STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.NOT_AUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
    500: ErrorCode.INTERNAL_ERROR,
}
#: Headers of an error answer that still hold when its body is replaced.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def _exception_error(exception: Exception) -> ApiError | None:
    """The JSON answer to an exception a view raised, or ``None``: let Django answer (and log) it."""
    if isinstance(exception, RequestDataTooBig):
        return ApiError(
            f"The request body is larger than the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes allowed here.",
            code=ErrorCode.REQUEST_TOO_LARGE,
            status=413,
        )
    if isinstance(exception, TooManyFieldsSent):
        return ApiError(
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} form fields.",
            code=ErrorCode.TOO_MANY_FIELDS,
        )
    if isinstance(exception, TooManyFilesSent):
        return ApiError(
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files.", code=ErrorCode.TOO_MANY_FILES
        )
    if isinstance(exception, SuspiciousOperation | BadRequest | MultiPartParserError):
        return ApiError("The request could not be read.", code=ErrorCode.BAD_REQUEST)
    if isinstance(exception, PermissionDenied):
        return ApiError("Not allowed.", code=ErrorCode.FORBIDDEN, status=403)
    if isinstance(exception, Http404):
        return ApiError("No such endpoint or object.", code=ErrorCode.NOT_FOUND, status=404)
    return None


def _as_json_error(response: HttpResponse) -> HttpResponse:
    status = response.status_code
    if status < 400 or response.streaming or response.get("Content-Type", "").startswith("application/json"):
        return response
    try:
        message = HTTPStatus(status).phrase + "."
    except ValueError:
        message = "Error."
    error = ApiError(message, code=STATUS_CODES.get(status, "error"), status=status)
    error.headers = {name: response[name] for name in _KEPT_HEADERS if name in response}
    return error_response(error)


class ApiErrorsMiddleware:
    """Under ``/api/``, every error answer is the JSON error body, whatever layer produced it. Goes first in
    ``MIDDLEWARE``, so that it sees what every other layer answered."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        response = self.get_response(request)
        return _as_json_error(response) if _is_api(request) else response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = await self.get_response(request)
        return _as_json_error(response) if _is_api(request) else response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # Synchronous: Django runs the exception hooks in a thread it has already moved to.
        if not _is_api(request):
            return None
        error = _exception_error(exception)
        return error_response(error) if error is not None else None


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError("The request could not be read.", code=ErrorCode.BAD_REQUEST, status=400))
    return defaults.bad_request(request, exception)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError("No such endpoint.", code=ErrorCode.NOT_FOUND, status=404))
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError("Internal error.", code=ErrorCode.INTERNAL_ERROR, status=500))
    return defaults.server_error(request)


# --- Streaming bodies -----------------------------------------------------------------------------------------


class _ClosingAsyncContent:
    __slots__ = ("_content", "close")

    def __init__(self, content: AsyncIterable[Any], on_close: Callable[[], None]) -> None:
        self._content = content
        self.close = on_close

    def __aiter__(self) -> AsyncIterator[Any]:
        return aiter(self._content)


class _ClosingSyncContent:
    __slots__ = ("_content", "close")

    def __init__(self, content: Iterable[Any], on_close: Callable[[], None]) -> None:
        self._content = content
        self.close = on_close

    def __iter__(self) -> Iterator[Any]:
        return iter(self._content)


def closing_content(
    content: AsyncIterable[Any] | Iterable[Any], on_close: Callable[[], None]
) -> _ClosingAsyncContent | _ClosingSyncContent:
    """``content`` for a ``StreamingHttpResponse`` that runs ``on_close`` when the response is closed, whether or
    not its body was ever read (a client gone before the first chunk): Django calls its content's ``close()``."""
    if hasattr(content, "__aiter__"):
        return _ClosingAsyncContent(content, on_close)  # type: ignore[arg-type]
    return _ClosingSyncContent(content, on_close)  # type: ignore[arg-type]
