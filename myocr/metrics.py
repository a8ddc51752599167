"""HTTP metrics, the ``/metrics`` endpoint and the figures computed from the database at scrape time.

``HttpMetricsMiddleware`` replaces django-prometheus' middlewares, which are ``MiddlewareMixin`` classes (two
thread hops per request under ASGI) and stop their clock when the view *returns* a streaming response, before
its first byte is sent. This one is async- and sync-capable, wraps a streaming body in a generator of the same
kind and records duration, status and bytes in that generator's ``finally``: when the last byte has gone, or
when the client went away. Labels are the route pattern (``/api/jobs/{job_id}``), never the raw path. Server-Sent
Events streams, open as long as a browser tab is, are timed in their own histogram.

``metrics_view`` serves the Prometheus text format at ``/metrics`` and ``/api/metrics``, optionally behind a
bearer token (``METRICS_TOKEN``) and/or a client address allow-list (``METRICS_ALLOWED_IPS``). With
``PROMETHEUS_MULTIPROC_DIR`` set it aggregates every server process' values (prometheus_client's multiprocess
mode). ``users_total`` and the active-user gauges are counted from the database when scraped, so they are right
whatever the number of processes.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # no URL pattern matched (404s, redirects answered by middleware)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Streams last as long as a PDF takes; the top buckets keep long jobs visible instead of all in +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "http_requests", "HTTP requests answered, by method, route pattern and status.", ["method", "path", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching Django to the last byte of its response (streams included).",
    ["method", "path"],
    buckets=DURATION_BUCKETS,
)
HTTP_FIRST_BYTE = Histogram(
    "http_time_to_first_byte_seconds",
    "Streaming responses: time from the request reaching Django to the first body chunk (the first frame).",
    ["method", "path"],
    buckets=FIRST_BYTE_BUCKETS,
)
HTTP_RESPONSE_BYTES = Counter(
    "http_response_bytes", "Bytes of response bodies sent, by method and route pattern.", ["method", "path"]
)
HTTP_EVENT_STREAMS = Histogram(
    "http_event_stream_duration_seconds",
    "Server-Sent Events responses (text/event-stream): how long the browser stayed connected.",
    ["path"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
)
HTTP_IN_FLIGHT = Gauge(
    "http_in_flight_requests", "HTTP requests being answered now (streams included).", multiprocess_mode="livesum"
)

_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def route_label(route: str) -> str:
    """``api/jobs/<str:job_id>`` → ``/api/jobs/{job_id}``; regex routes get the same treatment."""
    label = _ROUTE_PARAMETER.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", route)
    return "/" + label.replace("^", "").replace("$", "").lstrip("/")


class _Exchange:
    """One request's bookkeeping; ``finish`` records it once, whichever path gets there first."""

    __slots__ = ("done", "event_stream", "method", "request", "started", "status")

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.method = request.method if request.method in METHODS else "other"
        self.started = time.perf_counter()
        self.status = "499"  # the client went away before there was a response
        self.done = False
        self.event_stream = False
        HTTP_IN_FLIGHT.inc()

    def path(self) -> str:
        match = getattr(self.request, "resolver_match", None)
        if match is None:
            return UNMATCHED
        route = match.route
        label = _route_labels.get(route)
        if label is None:
            label = _route_labels[route] = route_label(route)
        return label

    def first_byte(self) -> None:
        HTTP_FIRST_BYTE.labels(self.method, self.path()).observe(time.perf_counter() - self.started)

    def finish(self, sent_bytes: int) -> None:
        if self.done:
            return
        self.done = True
        HTTP_IN_FLIGHT.dec()
        path = self.path()
        elapsed = time.perf_counter() - self.started
        if self.event_stream:
            # A browser's live page stays open for minutes or hours: that would drown the request latencies.
            HTTP_EVENT_STREAMS.labels(path).observe(elapsed)
        else:
            HTTP_DURATION.labels(self.method, path).observe(elapsed)
        HTTP_REQUESTS.labels(self.method, path, self.status).inc()
        if sent_bytes:
            HTTP_RESPONSE_BYTES.labels(self.method, path).inc(sent_bytes)


_route_labels: dict[str, str] = {}


def _measure(exchange: _Exchange, response: HttpResponse) -> HttpResponse:
    exchange.status = str(response.status_code)
    if not response.streaming:
        exchange.finish(len(response.content))
        return response
    exchange.event_stream = response.get("Content-Type", "").startswith("text/event-stream")
    if response.is_async:
        response.streaming_content = _async_body(exchange, response.streaming_content)
    else:
        response.streaming_content = _sync_body(exchange, response.streaming_content)
    # The server closes the response even when the body was never iterated (a client gone before the first
    # chunk); the generator's ``finally`` has then not run.
    response._resource_closers.append(lambda: exchange.finish(0))
    return response


async def _async_body(exchange: _Exchange, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    sent = 0
    try:
        async for chunk in content:
            if not sent:
                exchange.first_byte()
            sent += len(chunk)
            yield chunk
    finally:
        exchange.finish(sent)


def _sync_body(exchange: _Exchange, content: Iterator[bytes]) -> Iterator[bytes]:
    sent = 0
    try:
        for chunk in content:
            if not sent:
                exchange.first_byte()
            sent += len(chunk)
            yield chunk
    finally:
        exchange.finish(sent)


class HttpMetricsMiddleware:
    """Count and time every request until the last byte of its response; see the module docstring."""

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
        exchange = _Exchange(request)
        try:
            response = self.get_response(request)
        except BaseException:
            exchange.finish(0)
            raise
        return _measure(exchange, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        exchange = _Exchange(request)
        try:
            response = await self.get_response(request)
        except BaseException:
            exchange.finish(0)
            raise
        return _measure(exchange, response)


# --- figures from the database ----------------------------------------------------------------------------


class LedgerCollector(Collector):
    """Users, counted from the database at scrape time (one cheap query each, on indexed columns)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.contrib.auth import get_user_model
        from django.db import DatabaseError
        from django.db.models import Count, Q
        from django.utils import timezone

        from ocr.models import OcrJob

        try:
            users = get_user_model().objects.filter(is_active=True).count()
            now = timezone.now()
            active = OcrJob.objects.filter(created_at__gte=now - timedelta(days=7)).aggregate(
                day=Count("owner", distinct=True, filter=Q(created_at__gte=now - timedelta(days=1))),
                week=Count("owner", distinct=True),
            )
        except DatabaseError:
            logger.exception("metrics: could not count users")
            return
        yield GaugeMetricFamily("users_total", "Active user accounts (from the database).", value=users)
        family = GaugeMetricFamily(
            "users_active", "Users who started an OCR job within the window (from the ledger).", labels=["window"]
        )
        family.add_metric(["1d"], active["day"])
        family.add_metric(["7d"], active["week"])
        yield family


_ledger_registry = CollectorRegistry(auto_describe=False)
_ledger_registry.register(LedgerCollector())


def render_metrics() -> bytes:
    """The Prometheus text exposition of this process, or of all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_ledger_registry)


# --- the endpoint -----------------------------------------------------------------------------------------


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item, strict=False) for item in settings.METRICS_ALLOWED_IPS]


def _client_allowed(request: HttpRequest) -> bool:
    networks = _allowed_networks()
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in networks)


def _token_ok(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint. A plain sync view: the database counts and (in multiprocess mode) the
    reading of the metric files are blocking work, which Django runs in its thread."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"error": {"code": "method_not_allowed", "message": "Use GET."}}, status=405, headers={"Allow": "GET, HEAD"}
        )
    if not _client_allowed(request):
        return JsonResponse({"error": {"code": "forbidden", "message": "Not on the metrics allow-list."}}, status=403)
    if not _token_ok(request):
        response = JsonResponse(
            {"error": {"code": "not_authenticated", "message": "Send 'Authorization: Bearer <METRICS_TOKEN>'."}},
            status=401,
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    response = HttpResponse(render_metrics(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
