"""django-prometheus' metrics, recorded by our middleware and its backends: exactly its names and labels (the
community Django dashboards query them), streams timed to the last byte, database, cache and model figures."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client
from django.urls import path

from accounts.models import ApiToken
from accounts.tokens import token_create
from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES

from .conftest import make_user
from .test_metrics import Meter

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_request_is_counted_under_django_prometheus_names_and_labels() -> None:
    meter = Meter()
    assert (await AsyncClient().get("/healthz")).status_code == 200
    view = {"view": "healthz", "method": "GET"}
    assert meter.delta("django_http_requests_before_middlewares_total") == 1
    assert meter.delta("django_http_responses_before_middlewares_total") == 1
    assert meter.delta("django_http_requests_total_by_method_total", method="GET") == 1
    assert meter.delta("django_http_requests_total_by_transport_total", transport="http") == 1
    assert meter.delta("django_http_requests_total_by_view_transport_method_total", transport="http", **view) == 1
    assert meter.delta("django_http_responses_total_by_status_total", status="200") == 1
    assert meter.delta("django_http_responses_total_by_status_view_method_total", status="200", **view) == 1
    assert meter.delta("django_http_responses_total_by_charset_total", charset="utf-8") == 1
    assert meter.delta("django_http_requests_latency_seconds_by_view_method_count", **view) == 1
    assert meter.delta("django_http_requests_latency_including_middlewares_seconds_count") == 1
    assert meter.delta("django_http_requests_body_total_bytes_count") == 1
    assert meter.delta("django_http_responses_body_total_bytes_count") == 1
    assert meter.delta("django_http_responses_streaming_total") == 0


async def test_unmatched_paths_and_unknown_methods_get_django_prometheus_placeholders() -> None:
    meter = Meter()
    assert (await AsyncClient().get("/no/such/page")).status_code == 404
    await AsyncClient().generic("BREW", "/healthz")
    unnamed = {"status": "404", "view": "<unnamed view>", "method": "GET"}
    assert meter.delta("django_http_responses_total_by_status_view_method_total", **unnamed) == 1
    assert meter.delta("django_http_requests_total_by_method_total", method="<invalid method>") == 1
    assert meter.delta("django_http_requests_latency_seconds_by_view_method_count", view="healthz", method="BREW") == 0
    assert (
        meter.delta(
            "django_http_requests_latency_seconds_by_view_method_count", view="healthz", method="<invalid method>"
        )
        == 1
    )


async def test_an_ajax_request_and_its_body_size_are_counted() -> None:
    meter = Meter()
    body = b'{"username": "nobody", "password": "x"}'
    await AsyncClient().post(
        "/api/auth/token", body, content_type="application/json", headers={"X-Requested-With": "XMLHttpRequest"}
    )
    assert meter.delta("django_http_ajax_requests_total") == 1
    assert meter.delta("django_http_requests_body_total_bytes_sum") == len(body)


async def test_a_stream_is_timed_by_view_until_its_last_byte(api: Any, fake_vllm: Any) -> None:
    """The engine needs at least 1.1 s (12 tokens 0.1 s apart) after the view has returned: django-prometheus'
    latency of the view is that of the whole stream."""
    fake_vllm.set_default(tokens=12, token_delay=0.1)
    meter = Meter()
    view = {"view": "api:ocr-image", "method": "POST"}
    response = await api.post_file("image", SAMPLES["short"].render(), name="page.png")
    counted_at_return = meter.delta("django_http_requests_latency_seconds_by_view_method_count", **view)
    sent = sum([len(chunk) async for chunk in response.streaming_content])
    assert counted_at_return == 0, "not timed when the view returns"
    assert meter.delta("django_http_requests_latency_seconds_by_view_method_count", **view) == 1
    recorded = meter.delta("django_http_requests_latency_seconds_by_view_method_sum", **view)
    assert recorded >= 1.0, recorded  # the fake engine cannot be faster than its delays
    assert meter.delta("django_http_requests_latency_including_middlewares_seconds_sum") == pytest.approx(
        recorded, abs=0.01
    )
    assert meter.delta("django_http_responses_streaming_total") == 1
    assert meter.delta("django_http_responses_body_total_bytes_sum") == sent > 0


async def _event_stream(request: Any) -> StreamingHttpResponse:
    async def events() -> Any:
        yield b": hello\n\n"
        await asyncio.sleep(0.2)
        yield b"data: bye\n\n"

    return StreamingHttpResponse(events(), content_type="text/event-stream")


urlpatterns = [path("test/events", _event_stream, name="events")]


@pytest.mark.urls("tests.test_metrics_django")
async def test_event_streams_stay_out_of_the_request_latency_histograms() -> None:
    meter = Meter()
    response = await AsyncClient().get("/test/events")
    assert b"".join([chunk async for chunk in response.streaming_content]).endswith(b"bye\n\n")
    view = {"view": "events", "method": "GET"}
    assert meter.delta("django_http_responses_total_by_status_view_method_total", status="200", **view) == 1
    assert meter.delta("django_http_requests_latency_seconds_by_view_method_count", **view) == 0
    assert meter.delta("django_http_requests_latency_including_middlewares_seconds_count") == 0
    assert meter.delta("http_event_stream_duration_seconds_count", path="/test/events") == 1


def test_exceptions_raised_by_a_view_are_counted_by_type_and_view(alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    meter = Meter()
    assert client.get(f"/jobs/{uuid.uuid4()}/").status_code == 404
    assert meter.delta("django_http_exceptions_total_by_type_total", type="Http404") == 1
    assert meter.delta("django_http_exceptions_total_by_view_total", view="ocr:job") == 1
    assert (
        meter.delta(
            "django_http_responses_total_by_status_view_method_total", status="404", view="ocr:job", method="GET"
        )
        == 1
    )


def test_template_responses_are_counted_by_template(alice: Any) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client = Client()
    client.force_login(alice)
    meter = Meter()
    assert client.get("/admin/").status_code == 200
    assert meter.delta("django_http_responses_total_by_templatename_total", templatename="admin/index.html") == 1


def test_database_queries_are_counted_by_the_wrapped_backend() -> None:
    meter = Meter()
    count = get_user_model().objects.count()
    assert count >= 0
    labels = {"alias": "default", "vendor": "sqlite"}
    assert meter.delta("django_db_execute_total", **labels) == 1
    assert meter.delta("django_db_query_duration_seconds_count", **labels) == 1


def test_cache_reads_are_counted_with_hits_and_misses() -> None:
    meter = Meter()
    cache.set("metrics-test", 1)
    assert cache.get("metrics-test") == 1
    assert cache.get("metrics-test-absent") is None
    assert meter.delta("django_cache_get_total", backend="locmem") == 2
    assert meter.delta("django_cache_get_hits_total", backend="locmem") == 1
    assert meter.delta("django_cache_get_misses_total", backend="locmem") == 1


def test_model_operations_of_jobs_pages_tokens_and_users_are_counted() -> None:
    meter = Meter()
    user = make_user("modelops")
    user.email = "modelops@example.com"
    user.save()
    token_create(user=user, name="metrics test", kind=ApiToken.Kind.PERSONAL)
    job = OcrJob.objects.create(owner=user, kind="image", file_name="a.png", content_type="image/png", engine="x")
    job.status = "done"
    job.save()
    OcrPage.objects.create(job=job, number=1, status="done")
    job.delete()  # its page goes by cascade, which does not call the page's delete(): not counted
    user.delete()
    assert meter.delta("django_model_inserts_total", model="user") == 1
    assert meter.delta("django_model_updates_total", model="user") == 1
    assert meter.delta("django_model_deletes_total", model="user") == 1
    assert meter.delta("django_model_inserts_total", model="token") == 1
    assert meter.delta("django_model_inserts_total", model="job") == 1
    assert meter.delta("django_model_updates_total", model="job") == 1
    assert meter.delta("django_model_deletes_total", model="job") == 1
    assert meter.delta("django_model_inserts_total", model="page") == 1


async def test_model_counters_are_exposed_before_any_operation() -> None:
    body = (await AsyncClient().get("/metrics")).content.decode()
    for model in ("job", "page", "token", "user"):
        assert f'django_model_inserts_total{{model="{model}"}}' in body, model
