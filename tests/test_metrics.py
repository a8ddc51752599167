"""The Prometheus metrics: names and labels, when they are recorded, protection of /metrics, multiprocess mode.

In-process through Django's ASGI handler (``AsyncClient``) with the fake vLLM engine; the live Prometheus and
real-server checks are in ``test_monitoring.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client, RequestFactory
from django.urls import path
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from myocr.metrics import metrics_view
from ocr.models import OcrJob
from testing.documents import SAMPLES, make_numbered_pdf
from testing.monitoring import tool

from .conftest import frames_of, make_user

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Meter:
    """Reads how much metric samples changed since it was created (the registry is process-wide)."""

    def __init__(self) -> None:
        self.before = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in _samples()}

    def delta(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return value(name, **labels) - self.before.get(key, 0.0)


def _samples() -> list[Any]:
    return [sample for family in REGISTRY.collect() for sample in family.samples]


def scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def png() -> bytes:
    return SAMPLES["short"].render()


# --- the endpoint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/api/metrics"])
async def test_metrics_are_served_in_the_prometheus_text_format(path: str) -> None:
    response = await AsyncClient().get(path)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.content.decode())}
    for name in ("http_requests", "http_request_duration_seconds", "http_in_flight_requests", "users_total"):
        assert name in names, name
    for name in ("ocr_requests", "ocr_processing_seconds", "ocr_in_progress", "ocr_input_bytes", "tokens"):
        assert name in names, name


def test_exposition_passes_promtool_check_metrics() -> None:
    body = Client().get("/metrics").content
    result = subprocess.run([tool("promtool"), "check", "metrics"], input=body, capture_output=True, check=False)
    problems = [line for line in result.stderr.decode().splitlines() if line.strip()]
    # users_total keeps the original My OCR's name although it is a gauge; promtool's naming lint says so.
    unexpected = [line for line in problems if not line.startswith("users_total ")]
    assert not unexpected, result.stderr.decode()


async def test_metrics_token_is_required_when_configured(settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    client = AsyncClient()
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    ok = await client.get("/api/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert ok.status_code == 200


def test_metrics_allow_list_refuses_other_addresses(settings: Any) -> None:
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.0.2.7"]
    factory = RequestFactory()
    assert metrics_view(factory.get("/metrics", REMOTE_ADDR="127.0.0.1")).status_code == 403
    assert metrics_view(factory.get("/metrics", REMOTE_ADDR="10.20.30.40")).status_code == 200
    assert metrics_view(factory.get("/metrics", REMOTE_ADDR="192.0.2.7")).status_code == 200


async def test_users_total_is_counted_from_the_database_at_scrape_time() -> None:
    await sync_to_async(make_user)("dora")
    first = scrape((await AsyncClient().get("/metrics")).content)
    await sync_to_async(make_user)("erin")
    second = scrape((await AsyncClient().get("/metrics")).content)
    assert second[("users_total", ())] == first[("users_total", ())] + 1
    assert ("users_active", (("window", "1d"),)) in second


# --- HTTP metrics -----------------------------------------------------------------------------------------


async def test_http_path_label_is_the_route_pattern_not_the_raw_path(api: Any) -> None:
    meter = Meter()
    job_id = str(uuid.uuid4())
    assert (await api.get(f"/api/jobs/{job_id}")).status_code == 404
    assert (await api.get("/no/such/page/42")).status_code == 404
    assert meter.delta("http_requests_total", method="GET", path="/api/jobs/{job_id}", status="404") == 1
    assert meter.delta("http_requests_total", method="GET", path="unmatched", status="404") == 1
    labels = {s.labels.get("path") for s in _samples() if s.name == "http_requests_total"}
    assert not any(job_id in (label or "") for label in labels)


async def test_stream_duration_is_recorded_at_the_last_byte(api: Any, fake_vllm: Any, png: bytes) -> None:
    """The engine needs at least 1.5 s (16 tokens 0.1 s apart) after the view has returned its streaming response:
    the request's duration is recorded at the last byte, its time to first byte at the first."""
    fake_vllm.set_default(tokens=16, token_delay=0.1)
    meter = Meter()
    labels = {"method": "POST", "path": "/api/ocr/image"}
    response = await api.post_file("image", png, name="page.png")
    counted_at_return = meter.delta("http_request_duration_seconds_count", **labels)
    in_flight_during = None
    async for _chunk in response.streaming_content:
        if in_flight_during is None:
            in_flight_during = value("http_in_flight_requests")
    assert counted_at_return == 0, "not timed when the view returns"
    assert meter.delta("http_request_duration_seconds_count", **labels) == 1
    recorded = meter.delta("http_request_duration_seconds_sum", **labels)
    first_byte = meter.delta("http_time_to_first_byte_seconds_sum", **labels)
    assert recorded >= 1.4, recorded  # the fake engine cannot be faster than its delays
    assert meter.delta("http_time_to_first_byte_seconds_count", **labels) == 1
    assert recorded - first_byte >= 1.3, (recorded, first_byte)  # the tokens came after the first byte
    assert meter.delta("http_requests_total", status="200", **labels) == 1
    assert meter.delta("http_response_bytes_total", **labels) > 0
    assert in_flight_during is not None and in_flight_during >= 1
    assert value("http_in_flight_requests") == in_flight_during - 1
    processing = meter.delta("ocr_processing_seconds_sum", kind="image")  # from the job's start
    assert 1.4 <= processing <= recorded, (processing, recorded)


async def _event_stream(request: Any, number: int) -> StreamingHttpResponse:
    async def events() -> Any:
        yield b": hello\n\n"
        await asyncio.sleep(0.3)
        yield b"data: bye\n\n"

    return StreamingHttpResponse(events(), content_type="text/event-stream")


urlpatterns = [path("test/events/<int:number>", _event_stream)]


@pytest.mark.urls("tests.test_metrics")
async def test_event_streams_are_timed_apart_from_request_latency() -> None:
    meter = Meter()
    response = await AsyncClient().get("/test/events/7")
    assert b"".join([chunk async for chunk in response.streaming_content]).endswith(b"bye\n\n")
    path_label = "/test/events/{number}"
    assert meter.delta("http_event_stream_duration_seconds_count", path=path_label) == 1
    assert meter.delta("http_event_stream_duration_seconds_sum", path=path_label) >= 0.3
    assert meter.delta("http_request_duration_seconds_count", method="GET", path=path_label) == 0
    assert meter.delta("http_requests_total", method="GET", path=path_label, status="200") == 1


# --- OCR metrics ------------------------------------------------------------------------------------------


async def test_jobs_pages_and_inputs_are_counted_by_kind(api: Any, fake_vllm: Any, png: bytes) -> None:
    fake_vllm.set_default(tokens=20)
    meter = Meter()
    pdf = make_numbered_pdf(3)
    _, image_frames = await api.ocr("image", png, name="page.png")
    _, pdf_frames = await api.ocr("pdf", pdf, name="doc.pdf")
    assert frames_of(image_frames, "end")[0]["status"] == "done"
    assert frames_of(pdf_frames, "end")[0]["status"] == "done"
    assert meter.delta("ocr_requests_total", kind="image") == 1
    assert meter.delta("ocr_requests_total", kind="pdf") == 1
    assert meter.delta("image_requests_total") == 1
    assert meter.delta("pdf_requests_total") == 1
    assert meter.delta("ocr_input_bytes_total", kind="pdf") == len(pdf)
    assert meter.delta("ocr_input_bytes_total", kind="image") == len(png)
    assert meter.delta("ocr_jobs_total", kind="pdf", status="done") == 1
    assert meter.delta("ocr_pages_total", status="done") == 4
    assert meter.delta("ocr_page_processing_seconds_count", status="done") == 4
    assert meter.delta("ocr_finish_reasons_total", finish_reason="stop") == 4
    assert meter.delta("ocr_time_to_first_text_seconds_count", kind="pdf") == 1
    assert meter.delta("ocr_page_queue_seconds_count") == 4
    assert meter.delta("ocr_stream_deltas_total") >= 4
    for gauge, labels in (
        ("ocr_in_progress", {"kind": "pdf"}),
        ("ocr_pages_in_flight", {}),
        ("ocr_pages_waiting", {}),
    ):
        assert meter.delta(gauge, **labels) == 0, gauge


async def test_engine_errors_are_counted_by_code(api: Any, fake_vllm: Any, png: bytes) -> None:
    fake_vllm.push_script({"fail_status": 500})
    meter = Meter()
    _, frames = await api.ocr("image", png, name="page.png")
    assert frames_of(frames, "end")[0]["status"] == "failed"
    assert meter.delta("ocr_engine_errors_total", code="engine_error") == 1
    assert meter.delta("ocr_pages_total", status="failed") == 1
    assert meter.delta("ocr_jobs_total", kind="image", status="failed") == 1


async def test_pages_cut_off_by_the_token_limit_are_counted(api: Any, fake_vllm: Any, png: bytes) -> None:
    fake_vllm.push_script({"finish_reason": "length", "tokens": 30})
    meter = Meter()
    await api.ocr("image", png, name="page.png")
    assert meter.delta("ocr_finish_reasons_total", finish_reason="length") == 1
    assert meter.delta("ocr_pages_total", status="truncated") == 1
    assert meter.delta("ocr_engine_errors_total", code="engine_cut_off") == 1


async def test_requests_refused_before_a_job_are_counted_by_code(api: Any) -> None:
    meter = Meter()
    response, _ = await api.ocr("image", b"this is not an image at all", name="notes.txt")
    assert response.status_code == 415
    assert meter.delta("ocr_requests_rejected_total", kind="image", code="unsupported_type") == 1
    assert meter.delta("ocr_requests_total", kind="image") == 0


async def test_usage_counters_agree_with_the_ledger(api: Any, fake_vllm: Any, png: bytes) -> None:
    fake_vllm.set_default(tokens=25)
    fake_vllm.push_script({}, {"finish_reason": "length"}, {"fail_status": 400})
    meter = Meter()
    await api.ocr("pdf", make_numbered_pdf(4), name="doc.pdf")
    await api.ocr("image", png, name="page.png")
    jobs = await sync_to_async(list)(OcrJob.objects.all())
    prompt = sum(job.prompt_tokens for job in jobs)
    completion = sum(job.completion_tokens for job in jobs)
    assert prompt > 0 and completion > 0
    assert meter.delta("prompt_tokens_total") == prompt
    assert meter.delta("completion_tokens_total") == completion
    assert meter.delta("tokens_total") == prompt + completion
    assert meter.delta("ocr_completion_chars_total") == sum(job.completion_chars for job in jobs)


async def test_a_cancelled_job_releases_its_gauges(alice_token: str, fake_vllm: Any) -> None:
    """A consumer that stops reading (a client gone) cancels the job: the gauges fall back."""
    from .conftest import Api

    fake_vllm.set_default(tokens=10, first_token_delay=3.0)
    meter = Meter()
    response = await Api(alice_token).post_file("pdf", make_numbered_pdf(2), name="doc.pdf")
    stream = response.streaming_content
    while True:  # read the start and page_start frames; then no text comes for 3 s
        task = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait({task}, timeout=0.3)
        if not done:
            break
        task.result()
    assert meter.delta("ocr_pages_in_flight") == 2
    assert meter.delta("ocr_in_progress", kind="pdf") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_vllm_idle(fake_vllm)
    assert meter.delta("ocr_in_progress", kind="pdf") == 0
    assert meter.delta("ocr_pages_in_flight") == 0
    assert meter.delta("ocr_jobs_total", kind="pdf", status="cancelled") == 1
    assert meter.delta("ocr_pages_total", status="cancelled") >= 1


async def fake_vllm_idle(fake: Any) -> None:
    await asyncio.to_thread(fake.wait_for, lambda stats: stats["in_flight"] == 0, 10.0)


# --- several processes ------------------------------------------------------------------------------------

_CHILD = """
import os, django
django.setup()
from ocr import metrics
metrics.job_started(kind="pdf", input_bytes=1000, engine_slots=8)
metrics.OCR_PAGES.labels("done").inc(3)
print(os.getpid())
"""

_SCRAPE = """
import django, sys
django.setup()
from prometheus_client import multiprocess
from myocr.metrics import render_metrics
for pid in sys.argv[1:]:
    multiprocess.mark_process_dead(int(pid))
sys.stdout.write(render_metrics().decode())
"""


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, a scrape of any process reports the sum over all of them; live gauges
    drop a process once it is marked dead; users_total comes once, from the database."""
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "OCR_DATA_DIR": str(tmp_path),
    }
    (tmp_path / "prom").mkdir()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    def run(code: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    pids = [run(_CHILD).strip() for _ in range(2)]
    both = scrape(run(_SCRAPE).encode())
    assert both[("ocr_requests_total", (("kind", "pdf"),))] == 2
    assert both[("ocr_input_bytes_total", (("kind", "pdf"),))] == 2000
    assert both[("ocr_pages_total", (("status", "done"),))] == 6
    assert both[("ocr_in_progress", (("kind", "pdf"),))] == 2
    assert both[("ocr_engine_slots", ())] == 16
    assert both[("users_total", ())] == 0
    one_dead = scrape(run(_SCRAPE, pids[0]).encode())
    assert one_dead[("ocr_in_progress", (("kind", "pdf"),))] == 1
    assert one_dead[("ocr_requests_total", (("kind", "pdf"),))] == 2  # counters keep what the dead one did
