"""HTTP metrics, the ``/metrics`` endpoint and the figures computed from the database at scrape time.

The HTTP metrics are django-prometheus' (``django_http_*``, exactly its names and labels, so the community
Django dashboards work) and ours (``http_*``: the original My OCR's names, by route pattern, and the streaming
figures), all recorded by one middleware, ``PrometheusMiddleware``. It replaces django-prometheus' two
middlewares for two reasons:

- they are ``MiddlewareMixin`` classes: under ASGI each hook is a thread hop, four per request;
- they stop their clock when the view *returns* a streaming response, before its first byte is sent.

This one is async- and sync-capable and records into django-prometheus' own metric objects, through the
documented extension point: ``HttpMetrics`` subclasses its ``Metrics`` class (``metrics_cls``) and registers our
metrics beside its own. A streaming body is wrapped in a generator of the same kind, and the latencies, the bytes
sent and our request counter are recorded in that generator's ``finally``: when the last byte has gone, or when
the client went away. What django-prometheus counts when a response is returned (responses by status, view and
method, charset, streaming, template) is counted when the response is returned here too.

Where this differs from django-prometheus on purpose:

- Server-Sent Events streams stay open as long as a browser tab does: they are timed in their own histogram
  (``http_event_stream_duration_seconds``), not in the two request latency histograms.
- ``django_http_responses_body_total_bytes`` of a stream is the bytes actually sent, not 0.
- The ``method`` label of ``django_http_requests_latency_seconds_by_view_method`` is ``<invalid method>`` for an
  unknown method, as in its other metrics (it uses the raw method there, an unbounded label).
- The before/after pair is one middleware, first in ``MIDDLEWARE``: "including middlewares" and "by view" are both
  measured from it, so they differ only by the response counters' bookkeeping.

Labels are the route pattern (``/api/jobs/{job_id}``) or the URL name (``api:job-detail``), never the raw path.

``metrics_view`` serves the Prometheus text format at ``/metrics`` and ``/api/metrics``, optionally behind a
bearer token (``METRICS_TOKEN``) and/or a client address allow-list (``METRICS_ALLOWED_IPS``). With
``PROMETHEUS_MULTIPROC_DIR`` set it aggregates every server process' values (prometheus_client's multiprocess
mode), as django-prometheus' own export view does. ``users_total`` and the active-user gauges are counted from the
database when scraped, so they are right whatever the number of processes.
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
from django.template.response import SimpleTemplateResponse
from django_prometheus.middleware import Metrics
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

from myocr.http import closing_content
from ocr.events import ErrorCode

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # no URL pattern matched (404s, redirects answered by middleware)
UNNAMED_VIEW = "<unnamed view>"  # django-prometheus' view label when no named URL pattern matched
INVALID_METHOD = "<invalid method>"  # django-prometheus' method label for a method outside HTTP's
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# django-prometheus' list of methods it labels as themselves.
DJANGO_PROMETHEUS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"})
# Streams last as long as a PDF takes; the top buckets keep long jobs visible instead of all in +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HttpMetrics(Metrics):
    """django-prometheus' HTTP metrics, and ours in the same registry."""

    def register(self) -> None:
        super().register()
        self.http_requests = self.register_metric(
            Counter,
            "http_requests",
            "HTTP requests answered, by method, route pattern and status.",
            ["method", "path", "status"],
        )
        self.http_duration = self.register_metric(
            Histogram,
            "http_request_duration_seconds",
            "Time from the request reaching Django to the last byte of its response (streams included).",
            ["method", "path"],
            buckets=DURATION_BUCKETS,
        )
        self.http_first_byte = self.register_metric(
            Histogram,
            "http_time_to_first_byte_seconds",
            "Streaming responses: time from the request reaching Django to the first body chunk (the first frame).",
            ["method", "path"],
            buckets=FIRST_BYTE_BUCKETS,
        )
        self.http_response_bytes = self.register_metric(
            Counter,
            "http_response_bytes",
            "Bytes of response bodies sent, by method and route pattern.",
            ["method", "path"],
        )
        self.http_event_streams = self.register_metric(
            Histogram,
            "http_event_stream_duration_seconds",
            "Server-Sent Events responses (text/event-stream): how long the browser stayed connected.",
            ["path"],
            buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
        )
        self.http_in_flight = self.register_metric(
            Gauge,
            "http_in_flight_requests",
            "HTTP requests being answered now (streams included).",
            multiprocess_mode="livesum",
        )
        # Children by label values: ``labels()`` validates and hashes its arguments on every call.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def route_label(route: str) -> str:
    """``api/jobs/<str:job_id>`` → ``/api/jobs/{job_id}``; regex routes get the same treatment."""
    label = _ROUTE_PARAMETER.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", route)
    return "/" + label.replace("^", "").replace("$", "").lstrip("/")


_route_labels: dict[str, str] = {}


class _Exchange:
    """One request's bookkeeping; ``finish`` records it once, whichever path gets there first."""

    __slots__ = ("done", "event_stream", "method", "metrics", "request", "started", "status", "wire_method")

    def __init__(self, metrics: HttpMetrics, request: HttpRequest) -> None:
        self.metrics = metrics
        self.request = request
        self.started = time.perf_counter()
        raw = request.method
        self.method = raw if raw in METHODS else "other"
        self.wire_method = raw if raw in DJANGO_PROMETHEUS_METHODS else INVALID_METHOD
        self.status = "499"  # the client went away before there was a response
        self.done = False
        self.event_stream = False
        metrics.http_in_flight.inc()
        # django-prometheus' "before middlewares" and request figures.
        metrics.requests_total.inc()
        metrics.child(metrics.requests_by_method, self.wire_method).inc()
        metrics.child(metrics.requests_by_transport, self.transport()).inc()
        if request.headers.get("x-requested-with") == "XMLHttpRequest":
            metrics.requests_ajax.inc()
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            length = 0
        metrics.requests_body_bytes.observe(length)

    def transport(self) -> str:
        return "https" if self.request.is_secure() else "http"

    def path(self) -> str:
        match = getattr(self.request, "resolver_match", None)
        if match is None:
            return UNMATCHED
        route = match.route
        label = _route_labels.get(route)
        if label is None:
            label = _route_labels[route] = route_label(route)
        return label

    def view(self) -> str:
        match = getattr(self.request, "resolver_match", None)
        return (match.view_name if match is not None else None) or UNNAMED_VIEW

    def responded(self, response: HttpResponse) -> None:
        """What django-prometheus counts when the response is returned (its ``process_response``)."""
        metrics = self.metrics
        self.status = status = str(response.status_code)
        view = self.view()
        metrics.responses_total.inc()
        if getattr(self.request, "resolver_match", None) is not None:
            # Its process_view: requests that reached URL resolution.
            metrics.child(metrics.requests_by_view_transport_method, view, self.transport(), self.wire_method).inc()
        metrics.child(metrics.responses_by_status, status).inc()
        metrics.child(metrics.responses_by_status_view_method, status, view, self.wire_method).inc()
        metrics.child(metrics.responses_by_charset, str(response.charset)).inc()
        if response.streaming:
            metrics.responses_streaming.inc()
        if isinstance(response, SimpleTemplateResponse):
            metrics.child(metrics.responses_by_templatename, str(response.template_name)).inc()

    def first_byte(self) -> None:
        elapsed = time.perf_counter() - self.started
        self.metrics.child(self.metrics.http_first_byte, self.method, self.path()).observe(elapsed)

    def finish(self, sent_bytes: int, *, responded: bool = True) -> None:
        if self.done:
            return
        self.done = True
        metrics = self.metrics
        metrics.http_in_flight.dec()
        path = self.path()
        elapsed = time.perf_counter() - self.started
        if self.event_stream:
            # A browser's live page stays open for minutes or hours: that would drown the request latencies.
            metrics.child(metrics.http_event_streams, path).observe(elapsed)
        elif responded:
            metrics.child(metrics.http_duration, self.method, path).observe(elapsed)
            metrics.requests_latency_before.observe(elapsed)
            metrics.child(metrics.requests_latency_by_view_method, self.view(), self.wire_method).observe(elapsed)
        metrics.child(metrics.http_requests, self.method, path, self.status).inc()
        if responded:
            metrics.responses_body_bytes.observe(sent_bytes)
        if sent_bytes:
            metrics.child(metrics.http_response_bytes, self.method, path).inc(sent_bytes)


def _measure(exchange: _Exchange, response: HttpResponse) -> HttpResponse:
    exchange.responded(response)
    if not response.streaming:
        exchange.finish(len(response.content))
        return response
    exchange.event_stream = response.get("Content-Type", "").startswith("text/event-stream")
    body = (_async_body if response.is_async else _sync_body)(exchange, response.streaming_content)
    # The server closes the response even when the body was never iterated (a client gone before the first
    # chunk); the generator's ``finally`` has then not run.
    response.streaming_content = closing_content(body, lambda: exchange.finish(0))
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


class PrometheusMiddleware:
    """django-prometheus' HTTP metrics and ours, timed until the last byte of the response; see the module
    docstring. Goes first in ``MIDDLEWARE``."""

    sync_capable = True
    async_capable = True
    metrics_cls = HttpMetrics

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.metrics = self.metrics_cls.get_instance()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        exchange = _Exchange(self.metrics, request)
        try:
            response = self.get_response(request)
        except BaseException:
            exchange.finish(0, responded=False)
            raise
        return _measure(exchange, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        exchange = _Exchange(self.metrics, request)
        try:
            response = await self.get_response(request)
        except BaseException:
            exchange.finish(0, responded=False)
            raise
        return _measure(exchange, response)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """An exception raised by a view (``Http404`` included), as django-prometheus counts them. Django runs the
        exception hooks synchronously in the thread it has already moved to for them, so a plain function adds
        no thread hop (an ``async def`` would add one)."""
        metrics = self.metrics
        metrics.child(metrics.exceptions_by_type, type(exception).__name__).inc()
        match = getattr(request, "resolver_match", None)
        if match is not None:
            metrics.child(metrics.exceptions_by_view, match.view_name or UNNAMED_VIEW).inc()


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
            {"error": {"code": ErrorCode.METHOD_NOT_ALLOWED, "message": "Use GET."}},
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    if not _client_allowed(request):
        return JsonResponse(
            {"error": {"code": ErrorCode.FORBIDDEN, "message": "Not on the metrics allow-list."}}, status=403
        )
    if not _token_ok(request):
        response = JsonResponse(
            {
                "error": {
                    "code": ErrorCode.NOT_AUTHENTICATED,
                    "message": "Send 'Authorization: Bearer <METRICS_TOKEN>'.",
                }
            },
            status=401,
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    response = HttpResponse(render_metrics(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
