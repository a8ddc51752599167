"""Several vLLM servers in ``LLM_BASE_URL``: pages spread over them, a failing server left out with a backoff and
used again when it ends, the metrics by server.

Two real fake vLLM servers over loopback and the real engine and pipeline; the only seam is the pool's clock,
which the backoff tests move forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY

from ocr import engines
from ocr.config import ocr_config, parse_base_urls
from ocr.engines.servers import ServerPool, server_label
from ocr.engines.vllm import VllmEngine
from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES, make_numbered_pdf
from testing.fake_vllm import FakeVllm

from .conftest import frames_of, image_text
from .contract import assert_contract, streamed_text

pytestmark = [pytest.mark.django_db(transaction=True)]


class Clock:
    """A clock the test moves by hand: a backoff ends when the test says so, not when time has passed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def a() -> Iterator[Any]:
    with FakeVllm.run_in_thread(tokens=20) as server:
        yield server


@pytest.fixture
def b() -> Iterator[Any]:
    with FakeVllm.run_in_thread(tokens=20) as server:
        yield server


@pytest.fixture
def use_servers(settings: Any) -> Iterator[Any]:
    """Point the app at the given servers (in that order) and return its engine; its clients are closed and the
    engine forgotten afterwards, so that every test starts with a pool that knows nothing yet."""
    built: list[VllmEngine] = []

    def configure(*servers: Any) -> VllmEngine:
        settings.OCR_ENGINE = "openai"
        settings.LLM_BASE_URL = ",".join(server.base_url for server in servers)
        settings.LLM_API_KEY = "EMPTY"
        settings.OCR_ENGINE_FIRST_TOKEN_TIMEOUT = 10.0
        settings.OCR_ENGINE_IDLE_TIMEOUT = 5.0
        settings.OCR_ENGINE_TOTAL_TIMEOUT = 60.0
        engine = engines.get_engine()
        assert isinstance(engine, VllmEngine)
        built.append(engine)
        return engine

    yield configure
    for engine in built:
        for loop, clients in list(engine._clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(clients.close())
        engine._clients.clear()
        for config, cached in list(engines._engines.items()):
            if cached is engine:
                del engines._engines[config]


def label(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


async def pages_of(end: dict[str, Any]) -> list[OcrPage]:
    return [page async for page in OcrPage.objects.filter(job_id=end["job_id"]).order_by("number")]


async def settled(*servers: Any) -> list[dict[str, int]]:
    """The servers' counters once nothing is in flight: a client may read ``[DONE]`` before the server counts
    the request as completed."""
    return [await asyncio.to_thread(server.wait_for, lambda stats: stats["in_flight"] == 0, 30) for server in servers]


def assert_every_page_once(frames: list[dict[str, Any]], count: int) -> None:
    ends = [frame["page"] for frame in frames_of(frames, "page_end")]
    assert sorted(ends) == list(range(1, count + 1)), "every page ends exactly once"
    assert all(frame["status"] == "done" for frame in frames_of(frames, "page_end"))


# --- configuration ----------------------------------------------------------------------------------------


def test_the_url_list_is_split_on_commas_without_blanks_or_repeats() -> None:
    assert parse_base_urls("http://a:8000/v1, http://b:8000/v1,,http://a:8000/v1 ") == (
        "http://a:8000/v1",
        "http://b:8000/v1",
    )
    assert parse_base_urls("") == ()
    with pytest.raises(ImproperlyConfigured, match="not an http"):
        parse_base_urls("http://a:8000/v1,b:8000")


def test_one_url_keeps_its_meaning_and_several_are_all_kept(settings: Any) -> None:
    settings.LLM_BASE_URL = "http://engine:8000/v1"
    assert (ocr_config().llm_base_url, ocr_config().llm_base_urls) == (
        "http://engine:8000/v1",
        ("http://engine:8000/v1",),
    )
    settings.LLM_BASE_URL = "http://gpu1:8000/v1,http://gpu2:8000/v1"
    config = ocr_config()
    assert config.llm_base_url == "http://gpu1:8000/v1"
    assert config.llm_base_urls == ("http://gpu1:8000/v1", "http://gpu2:8000/v1")
    assert config.engine == "openai"


def test_server_labels_are_host_and_port_only() -> None:
    assert server_label("http://gpu1:8000/v1") == "gpu1:8000"
    assert server_label("https://ocr.example.org/v1") == "ocr.example.org:443"
    assert server_label("http://[::1]:8000/v1") == "[::1]:8000"
    pool = ServerPool(["http://gpu1:8000/v1", "http://gpu1:8000/other/v1"])
    assert [server.label for server in pool.servers] == ["gpu1:8000", "gpu1:8000#2"], "labels stay distinct"


# --- the pool's choices -----------------------------------------------------------------------------------


def test_the_server_with_fewest_requests_in_flight_is_chosen_and_ties_alternate() -> None:
    pool = ServerPool(["http://a:1/v1", "http://b:1/v1", "http://c:1/v1"])
    first, second, third = pool.acquire(), pool.acquire(), pool.acquire()
    assert [t.server.label for t in (first, second, third)] == ["a:1", "b:1", "c:1"]
    pool.release(second, result="done")
    assert pool.acquire().server.label == "b:1", "b has nothing in flight now"
    pool.release(first, result="done")
    pool.release(third, result="done")
    # a: 0, b: 1, c: 0 in flight: a and c tie, and the round goes on from b.
    assert pool.acquire().server.label == "c:1"


def test_a_failed_server_is_left_out_with_a_doubling_backoff_and_one_trial_request() -> None:
    clock = Clock()
    pool = ServerPool(["http://a:1/v1", "http://b:1/v1"], backoff=1.0, max_backoff=4.0, clock=clock)
    a_server = pool.servers[0]
    delays = []
    for _ in range(4):
        ticket = pool.acquire()
        while ticket.server is not a_server:  # a request to b, to reach a again
            pool.release(ticket, result="done")
            ticket = pool.acquire()
        assert pool.failed(ticket)
        pool.release(ticket, result="engine_unavailable")
        delays.append(a_server.retry_at - clock.now)
        others = [pool.acquire() for _ in range(3)]
        assert all(other.server is not a_server for other in others), "a is out during its backoff"
        for other in others:
            pool.release(other, result="done")
        clock.now = a_server.retry_at
    assert delays == [1.0, 2.0, 4.0, 4.0], "doubling, up to max_backoff"

    trial = pool.acquire()
    assert trial.server is a_server and trial.trial, "after the backoff, one request goes to a"
    assert pool.acquire().server is not a_server, "only one while the trial runs"
    pool.answered(trial)
    assert a_server.healthy and a_server.failures == 0, "a answered: back, and its next backoff starts at 1 s"


def test_failures_of_one_outage_count_once() -> None:
    clock = Clock()
    pool = ServerPool(["http://a:1/v1", "http://b:1/v1"], clock=clock)
    a_server = pool.servers[0]
    in_a = [ticket for ticket in (pool.acquire() for _ in range(6)) if ticket.server is a_server]
    assert len(in_a) == 3
    assert [pool.failed(ticket) for ticket in in_a] == [True, False, False]
    assert a_server.retry_at == clock.now + 1.0, "three requests that broke together: one backoff of 1 s"


def test_when_every_server_is_out_the_one_back_first_gets_the_request() -> None:
    clock = Clock()
    pool = ServerPool(["http://a:1/v1", "http://b:1/v1"], clock=clock)
    first, second = pool.acquire(), pool.acquire()
    pool.failed(second)  # b first: its backoff ends first
    clock.now += 0.5
    pool.failed(first)
    assert not pool.has_available()
    chosen = pool.acquire()
    assert chosen.server is second.server, "not refused: sent to the server whose backoff ends first"


# --- with the real engine, pipeline and two servers -------------------------------------------------------


async def test_pages_of_a_pdf_are_spread_over_both_servers(api, a, b, use_servers, settings):
    settings.OCR_PAGE_CONCURRENCY = 4
    use_servers(a, b)
    before = {server: sample("ocr_engine_requests_total", server=label(server), result="done") for server in (a, b)}

    _, frames = await api.ocr("pdf", make_numbered_pdf(8))

    assert assert_contract(frames, "pdf")["status"] == "done"
    assert_every_page_once(frames, 8)
    stats = await settled(a, b)
    assert stats[0]["completed"] >= 1 and stats[1]["completed"] >= 1, "both servers got pages"
    assert stats[0]["completed"] + stats[1]["completed"] == 8
    for server, counts in zip((a, b), stats, strict=True):
        done = sample("ocr_engine_requests_total", server=label(server), result="done") - before[server]
        assert done == counts["completed"], "the metrics count each server's requests under its label"
        assert sample("ocr_engine_server_up", server=label(server)) == 1
        assert sample("ocr_engine_server_in_flight", server=label(server)) == 0


async def test_a_slow_server_gets_fewer_pages(api, a, b, use_servers, settings):
    settings.OCR_PAGE_CONCURRENCY = 4
    a.set_default(tokens=30, token_delay=0.05)  # a page takes a second and a half on a, milliseconds on b
    use_servers(a, b)

    _, frames = await api.ocr("pdf", make_numbered_pdf(12))

    assert assert_contract(frames, "pdf")["status"] == "done"
    assert_every_page_once(frames, 12)
    on_a, on_b = (counts["completed"] for counts in await settled(a, b))
    assert on_a + on_b == 12
    assert on_b > on_a


async def test_a_server_stopped_mid_run_hands_its_pages_to_the_other(api, a, b, use_servers, settings):
    settings.OCR_PAGE_CONCURRENCY = 4
    for server in (a, b):
        server.set_default(tokens=40, token_delay=0.02)
    use_servers(a, b)

    job = asyncio.create_task(api.ocr("pdf", make_numbered_pdf(8)))
    # Stop b while it streams a page: that page's connection drops.
    await asyncio.to_thread(b.wait_for, lambda stats: stats["in_flight"] >= 1, 30)
    await asyncio.to_thread(b.stop)
    _, frames = await job

    end = assert_contract(frames, "pdf")
    assert end["status"] == "done"
    assert_every_page_once(frames, 8)
    assert b.stats["aborted"] >= 1, "b had a page in flight when it stopped"
    [on_a] = await settled(a)
    assert on_a["completed"] + b.stats["completed"] == 8, "each page completed once, on one server"
    pages = await pages_of(end)
    assert [page.status for page in pages] == ["done"] * 8
    assert [page.text for page in pages] == [streamed_text(frames, n) for n in range(1, 9)]
    assert all(page.text for page in pages)
    assert sample("ocr_engine_server_up", server=label(b)) == 0, "b is left out"


async def test_a_dropped_stream_is_retried_on_the_other_server(api, a, b, use_servers, settings):
    settings.OCR_ENGINE_RETRY_SECONDS = 1.0
    b.push_script({"tokens": 50, "drop_after": 3})
    a.set_default(text="Read by a.")
    engine = use_servers(b, a)  # b first: the page goes there first
    retries = sample("ocr_engine_retries_total", code="engine_error")

    _, frames = await api.ocr("image", SAMPLES["short"].render())

    end = assert_contract(frames, "image")
    assert end["status"] == "done"
    assert image_text(frames) == "Read by a.", "a's text replaced what b streamed before dropping"
    assert any(frame.get("reset") for frame in frames_of(frames, "delta")), "the client is told to start again"
    on_a, on_b = await settled(a, b)
    assert (on_b["dropped"], on_b["completed"], on_a["completed"]) == (1, 0, 1)
    assert sample("ocr_engine_retries_total", code="engine_error") == retries + 1
    assert sample("ocr_engine_requests_total", server=label(b), result="engine_error") >= 1
    assert engine.retry_delay(1.0) == 0.0, "a takes requests: a retry needs no wait"


async def test_a_server_answering_503_is_left_out_and_used_again_after_its_backoff(api, a, b, use_servers, settings):
    settings.OCR_PAGE_CONCURRENCY = 1
    b.set_default(fail_status=503)
    engine = use_servers(a, b)
    clock = engine.servers.clock = Clock()
    ejections = sample("ocr_engine_server_ejections_total", server=label(b))

    _, frames = await api.ocr("pdf", make_numbered_pdf(4))

    assert assert_contract(frames, "pdf")["status"] == "done"
    assert_every_page_once(frames, 4)
    on_a, on_b = await settled(a, b)
    assert (on_a["completed"], on_b["failed"]) == (4, 1), "one 503 from b, then b is left out"
    assert sample("ocr_engine_server_ejections_total", server=label(b)) == ejections + 1
    assert sample("ocr_engine_server_up", server=label(b)) == 0

    b.reset()  # b is healthy again, but its backoff has not ended
    _, frames = await api.ocr("pdf", make_numbered_pdf(2))
    assert assert_contract(frames, "pdf")["status"] == "done"
    assert b.stats["requests"] == 0, "no request to b during its backoff"

    clock.now += 1.0  # the first backoff is one second
    _, frames = await api.ocr("pdf", make_numbered_pdf(4))
    assert assert_contract(frames, "pdf")["status"] == "done"
    [on_b] = await settled(b)
    assert on_b["completed"] >= 1, "b takes pages again"
    assert sample("ocr_engine_server_up", server=label(b)) == 1


async def test_when_both_servers_refuse_the_page_waits_for_the_first_back(api, a, b, use_servers, png):
    a.push_script({"fail_status": 503})
    a.set_default(text="Read by a.")
    b.set_default(fail_status=503)
    use_servers(a, b)

    _, frames = await api.ocr("image", png)

    assert assert_contract(frames, "image")["status"] == "done"
    assert image_text(frames) == "Read by a."
    # a refused, b refused, then a (its backoff ends first) rather than failing at once.
    on_a, on_b = await settled(a, b)
    assert (on_a["failed"], on_b["failed"], on_a["completed"]) == (1, 1, 1)
    assert [record["status"] for record in a.requests] == [503, 200]


async def test_one_server_is_every_request_whatever_its_state(api, a, use_servers, png):
    a.push_script({"fail_status": 503}, {"fail_status": 503})
    engine = use_servers(a)

    _, frames = await api.ocr("image", png)

    assert assert_contract(frames, "image")["status"] == "done", "retried on the only server, after a pause"
    [on_a] = await settled(a)
    assert (on_a["failed"], on_a["completed"]) == (2, 1)
    assert engine.retry_delay(1.0) == 1.0, "no other server: the pipeline's own backoff applies"
    job = await OcrJob.objects.aget(pk=frames[-1]["job_id"])
    assert job.status == "done"


@pytest.fixture
def png() -> bytes:
    return SAMPLES["short"].render()
