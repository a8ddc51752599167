"""Faults beyond a single failing request, against real Daphne processes and the fake vLLM engine on loopback.

- an engine that flaps up and down during a 50-page PDF: every page ends once, nothing that was read is lost;
- an engine far slower than the clients: the pages wait for the engine unrendered, so memory stays bounded;
- many clients that leave at random moments: every job ends, every engine request is cancelled, no gauge leaks;
- 50 jobs at once writing to SQLite (API and live browser jobs): no "database is locked", nothing lost;
- the server killed in the middle of jobs: the next process marks them interrupted with the usage so far, and a
  new process never touches the jobs of one that is alive.

Waits are deadlines on observable state (the database, /metrics, the fake engine's counters), never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.common import multipart, rss_bytes
from testing.documents import SAMPLES, make_numbered_pdf
from testing.fake_vllm import FakeVllm
from testing.servers import AppServer
from testing.waiting import wait_until

from .conftest import PASSWORD, AppServers
from .contract import assert_contract, streamed_text

pytestmark = [pytest.mark.slow]

PNG = SAMPLES["short"].render()
GAUGES = ("ocr_in_progress", "ocr_pages_in_flight", "ocr_pages_waiting")


# --- helpers ----------------------------------------------------------------------------------------------


def db_rows(server: AppServer, sql: str, *params: Any) -> list[tuple]:
    """Read the server's SQLite database (read-only, beside the server's writers: WAL)."""
    connection = sqlite3.connect(f"file:{server.data_dir / 'db.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def job_statuses(server: AppServer) -> dict[str, int]:
    return dict(db_rows(server, "SELECT status, COUNT(*) FROM ocr_ocrjob GROUP BY status"))


def gauges(server: AppServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (*GAUGES, "http_in_flight_requests"):
            values[family.name] = sum(sample.value for sample in family.samples)
    return values


def no_leaks(server: AppServer) -> bool:
    values = gauges(server)
    return all(values.get(name, 0) == 0 for name in GAUGES) and values.get("http_in_flight_requests") == 1


def assert_clean_log(server: AppServer) -> None:
    log = server.log()
    for bad in ("Traceback", "database is locked", "Task exception was never retrieved", "never awaited"):
        assert bad not in log, f"{bad!r} in the server log:\n{log[-4000:]}"


def fault_env(engine: Any, **env: str) -> dict[str, str]:
    """The servers of this module: no per-user limits, heartbeats every second, partial text flushed often."""
    return {
        "OCR_ENGINE": "openai",
        "LLM_BASE_URL": engine.base_url,
        "OCR_ENGINE_IDLE_TIMEOUT": "10",
        "OCR_ENGINE_FIRST_TOKEN_TIMEOUT": "20",
        "OCR_USER_MAX_RUNNING_JOBS": "0",
        "OCR_USER_DAILY_PAGES": "0",
        "OCR_WORKER_HEARTBEAT_SECONDS": "1",
        "OCR_LIVE_FLUSH_SECONDS": "0.1",
        **env,
    }


@dataclass
class Stream:
    status: int = 0
    job_id: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    left_early: bool = False


async def ndjson_request(
    server: AppServer,
    token: str,
    kind: str,
    data: bytes,
    *,
    leave_after: int | None = None,
    abort: bool = False,
) -> Stream:
    """POST an upload over a raw socket and read NDJSON frames; ``leave_after`` frames (0: right after the
    headers), then close the connection (``abort``: with a reset)."""
    content_type, body = multipart(f"upload.{'png' if kind == 'image' else 'pdf'}", data)
    head = (
        f"POST /api/ocr/{kind} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    result = Stream()
    try:
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        result.status = int(status_line.split()[1])
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"x-job-id:"):
                result.job_id = line.split(b":", 1)[1].strip().decode()
        buffer = b""
        while leave_after is None or len(result.frames) < leave_after:
            size_line = await reader.readline()
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            buffer += (await reader.readexactly(size + 2))[:-2]
            *lines, buffer = buffer.split(b"\n")
            result.frames.extend(json.loads(line) for line in lines if line)
        result.left_early = leave_after is not None and not (result.frames and result.frames[-1]["type"] == "end")
    finally:
        if abort:
            writer.transport.abort()
        else:
            writer.close()
    return result


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored_job(server: AppServer, token: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=auth(token), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_ledger_matches_stream(job: dict[str, Any], frames: list[dict[str, Any]]) -> None:
    """What the client was told is what the ledger keeps: statuses, text of every page, usage."""
    end = frames[-1]
    assert job["status"] == end["status"]
    assert job["pages_done"] == end["pages_done"] and job["pages_failed"] == end["pages_failed"]
    for key in ("prompt_tokens", "completion_tokens", "completion_chars"):
        assert job["usage"][key] == end["usage"][key], key
    page_ends = {frame["page"]: frame for frame in frames if frame["type"] == "page_end"}
    for page in job["pages_detail"]:
        streamed = streamed_text(frames, page["page"])
        assert page["status"] == page_ends[page["page"]]["status"]
        assert page["text"] == streamed, f"page {page['page']}: the ledger lost or changed text"
    assert len(job["pages_detail"]) == len(page_ends)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server: AppServers) -> Iterator[AppServer]:
    app = module_app_server(fault_env(fake_vllm_server, OCR_PAGE_CONCURRENCY="8"), name="faults")
    app.token = app.register_and_login("fran")
    yield app
    app.stop()
    assert_clean_log(app)


# --- an engine that flaps ---------------------------------------------------------------------------------


def test_an_engine_flapping_during_a_50_page_pdf_loses_nothing_that_was_read(server, fake):
    """The engine goes down and comes back over and over (refusals, dropped and broken streams): every page ends
    exactly once, the pages that were read keep every character, and the engine serves normally afterwards."""
    fake.set_default(tokens=30)
    down = [{"fail_status": 503}, {"drop_after": 3}, {"error_after": 2}, {"fail_status": 500}]
    script = []
    for cycle in range(12):
        script += [{}] * 3 + [down[cycle % len(down)]] * (1 + cycle % 3)
    fake.push_script(*script)

    stream = asyncio.run(ndjson_request(server, server.token, "pdf", make_numbered_pdf(50)))

    assert stream.status == 200
    end = assert_contract(stream.frames, "pdf")
    statuses = [frame["status"] for frame in stream.frames if frame["type"] == "page_end"]
    assert len(statuses) == 50
    assert end["status"] == "partial" and 0 < statuses.count("failed") < 50
    codes = {f["error"]["code"] for f in stream.frames if f["type"] == "page_end" and f["status"] == "failed"}
    assert codes <= {"engine_unavailable", "engine_error"}
    assert_ledger_matches_stream(stored_job(server, server.token, end["job_id"]), stream.frames)
    fake.wait_for(lambda stats: stats["in_flight"] == 0, timeout=10)
    after = asyncio.run(ndjson_request(server, server.token, "image", PNG))
    assert after.frames[-1]["status"] == "done"


# --- an engine slower than the clients --------------------------------------------------------------------


def test_an_engine_slower_than_the_clients_keeps_memory_bounded(app_server: AppServers):
    """500 pages queued behind an engine that takes two at a time: pages wait unrendered, the engine never gets
    more than the app's limit, and the server's memory stays far below what rendering them all would take."""
    with FakeVllm.run_in_thread(max_concurrency=2, tokens=40, token_delay=0.01, first_token_delay=0.1) as engine:
        app = app_server(fault_env(engine, OCR_ENGINE_CONCURRENCY="6", OCR_PAGE_CONCURRENCY="8"), name="slow-engine")
        try:
            token = app.register_and_login("gil")
            baseline = rss_bytes(app.process.pid)
            peak = baseline
            waiting_seen = 0.0

            def sample() -> bool:
                """One reading of the server's memory and waiting pages; true once the load has run long enough:
                most pages wait while the engine reads twenty of them."""
                nonlocal peak, waiting_seen
                peak = max(peak, rss_bytes(app.process.pid))
                waiting_seen = max(waiting_seen, gauges(app).get("ocr_pages_waiting", 0))
                return waiting_seen >= 100 and engine.stats["completed"] >= 20

            async def load() -> None:
                pdf = make_numbered_pdf(25)
                clients = [asyncio.create_task(ndjson_request(app, token, "pdf", pdf)) for _ in range(20)]
                await asyncio.to_thread(
                    wait_until,
                    sample,
                    timeout=90,
                    what="most pages waiting while the engine reads twenty",
                    interval=0.1,
                )
                for client in clients:  # the clients give up: their connections close
                    client.cancel()
                await asyncio.gather(*clients, return_exceptions=True)

            asyncio.run(load())
            stats = engine.stats
            wait_until(lambda: job_statuses(app).get("running", 0) == 0, timeout=20, what="every job has ended")
            wait_until(lambda: no_leaks(app), timeout=10, what="the gauges are back to zero")
            engine.wait_for(lambda s: s["in_flight"] == 0, timeout=10)
        finally:
            app.stop()
    assert stats["max_in_flight"] <= 6, "the app never sends the engine more than OCR_ENGINE_CONCURRENCY pages"
    assert waiting_seen >= 100, "most pages were waiting for the engine"
    rendering_them_all = 500 * 1200 * 1700 * 3  # pixels of the pages at 144 dpi, 3 bytes each: about 3 GB
    assert peak - baseline < 200 * 1024 * 1024 < rendering_them_all / 10, f"RSS grew by {(peak - baseline) >> 20} MB"
    assert job_statuses(app) == {"cancelled": 20}
    assert_clean_log(app)


# --- clients that leave -----------------------------------------------------------------------------------


def test_many_clients_leaving_at_random_moments_leave_nothing_behind(server, fake):
    fake.set_default(tokens=60, token_delay=0.005)
    rng = random.Random(6)
    plans = []
    for index in range(40):
        kind = "pdf" if index % 2 else "image"
        leave = rng.choice([None, 0, 1, 2, 5, 12, 30])
        plans.append((kind, leave, rng.random() < 0.5))
    before = dict(db_rows(server, "SELECT id, status FROM ocr_ocrjob"))

    async def clients() -> list[Stream]:
        return await asyncio.gather(
            *(
                ndjson_request(
                    server,
                    server.token,
                    kind,
                    PNG if kind == "image" else make_numbered_pdf(6),
                    leave_after=leave,
                    abort=abort,
                )
                for kind, leave, abort in plans
            )
        )

    streams = asyncio.run(clients())

    wait_until(lambda: job_statuses(server).get("running", 0) == 0, timeout=20, what="every job has ended")
    wait_until(lambda: no_leaks(server), timeout=10, what="the gauges are back to zero")
    fake.wait_for(lambda stats: stats["in_flight"] == 0, timeout=10)
    jobs = {
        job_id: status
        for job_id, status in db_rows(server, "SELECT id, status FROM ocr_ocrjob")
        if job_id not in before
    }
    assert len(jobs) == 40
    by_id = {stream.job_id.replace("-", ""): stream for stream in streams}
    for job_id, status in jobs.items():
        stream = by_id[job_id]
        if not stream.left_early:
            assert status == "done" and stream.frames[-1]["status"] == "done"
        else:
            assert status in ("cancelled", "done"), status  # a client can leave just as its job ends
    left = [stream for stream in streams if stream.left_early]
    assert len(left) >= 20
    assert fake.stats["aborted"] >= 1, "the engine requests of departed clients were cancelled"
    assert asyncio.run(ndjson_request(server, server.token, "image", PNG)).frames[-1]["status"] == "done"


# --- the database under concurrent writers ----------------------------------------------------------------


def browser_client(server: AppServer, username: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/accounts/login/", data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    return client


def browser_upload(client: httpx.Client, data: bytes) -> str:
    page = client.get("/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/jobs/new",
        data={"preset": "default", "csrfmiddlewaretoken": token},
        files={"file": ("scan.pdf", data, "application/pdf")},
    )
    assert response.status_code == 302, response.text[:300]
    return response.headers["Location"].split("/")[2]


def test_fifty_jobs_at_once_on_sqlite_never_hit_database_is_locked(server, fake):
    """40 API streams and 10 live browser jobs (which also store partial text as it streams), all at once."""
    fake.set_default(tokens=40, token_delay=0.002)
    browser = browser_client(server, "fran")
    pdf = make_numbered_pdf(4)

    async def api_streams() -> list[Stream]:
        return await asyncio.gather(*(ndjson_request(server, server.token, "pdf", pdf) for _ in range(40)))

    async def everything() -> tuple[list[Stream], list[str]]:
        browser_jobs = asyncio.gather(*(asyncio.to_thread(browser_upload, browser, pdf) for _ in range(10)))
        return await asyncio.gather(api_streams(), browser_jobs)

    streams, live_ids = asyncio.run(everything())

    for stream in streams:
        assert stream.status == 200 and assert_contract(stream.frames, "pdf")["status"] == "done"
    wait_until(
        lambda: all(stored_job(server, server.token, job_id)["status"] != "running" for job_id in live_ids),
        timeout=30,
        what="the live jobs have ended",
    )
    for job_id in live_ids:
        job = stored_job(server, server.token, job_id)
        assert job["status"] == "done" and [page["status"] for page in job["pages_detail"]] == ["done"] * 4
        assert all(page["text"] for page in job["pages_detail"])
    for stream in streams[:5]:
        assert_ledger_matches_stream(stored_job(server, server.token, stream.job_id), stream.frames)
    assert "database is locked" not in server.log()
    wait_until(lambda: no_leaks(server), timeout=10, what="the gauges are back to zero")


# --- the server restarted in the middle of jobs -----------------------------------------------------------


def hold_stream(server: AppServer, token: str, data: bytes, frames: list[dict[str, Any]]) -> None:
    """Read a PDF stream until the server goes away."""
    try:
        with httpx.stream(
            "POST", f"{server.url}/api/ocr/pdf", files={"file": ("book.pdf", data)}, headers=auth(token), timeout=90
        ) as response:
            for line in response.iter_lines():
                frames.append(json.loads(line))
    except httpx.HTTPError:
        pass  # the server was killed


def done_pages(server: AppServer) -> int:
    return db_rows(server, "SELECT COUNT(*) FROM ocr_ocrpage WHERE status = 'done'")[0][0]


def test_a_killed_server_s_browser_job_resumes_and_its_streaming_jobs_become_interrupted(fake, app_server):
    """A live browser job and three API jobs, two pages of each read and the next ones streaming, when the server
    is killed (SIGKILL: no cleanup at all). The next process resumes the browser job (detached: its upload is
    kept) from its stored pages to the end, and marks the streaming jobs, whose clients went with the process,
    interrupted with what they recorded."""
    first = app_server(fault_env(fake, OCR_PAGE_CONCURRENCY="2"), name="killed")
    token = first.register_and_login("hugo")
    browser = browser_client(first, "hugo")
    fake.set_default(tokens=40, token_delay=0.025)  # about a second a page; ten pages a job, two at a time
    live_id = browser_upload(browser, make_numbered_pdf(10))
    holders: list[threading.Thread] = []
    frames: list[list[dict[str, Any]]] = []
    for _ in range(3):
        frames.append([])
        holder = threading.Thread(
            target=hold_stream, args=(first, token, make_numbered_pdf(10), frames[-1]), daemon=True
        )
        holder.start()
        holders.append(holder)

    def in_the_middle() -> bool:
        done = db_rows(first, "SELECT job_id, COUNT(*) FROM ocr_ocrpage WHERE status = 'done' GROUP BY job_id")
        streaming = db_rows(first, "SELECT COUNT(*) FROM ocr_ocrpage WHERE status = 'running' AND text != ''")[0][0]
        return len(done) == 4 and min(count for _, count in done) >= 2 and streaming > 0

    wait_until(
        in_the_middle,
        timeout=20,
        what="every job has read two pages and the live one stored a running page's text",
    )
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    for holder in holders:
        holder.join(10)
    assert job_statuses(first) == {"running": 4}, "the killed process could not close its jobs"
    fake.reset()
    fake.set_default(tokens=20)

    second = app_server(first.env, data_dir=first.data_dir, log_name="server-2.log")
    try:
        wait_until(
            lambda: set(job_statuses(second)) <= {"interrupted", "done"},
            timeout=30,
            what="every job ended or was interrupted",
        )
        jobs = db_rows(
            second,
            "SELECT id, status, error_code, pages_done, pages_failed, prompt_tokens, completion_tokens, "
            "completion_chars, usage_estimated FROM ocr_ocrjob",
        )
        live_key = live_id.replace("-", "")
        [resumed] = [job for job in jobs if job[0] == live_key]
        pages = db_rows(
            second,
            "SELECT status, prompt_tokens, completion_tokens, completion_chars FROM ocr_ocrpage WHERE job_id = ?",
            live_key,
        )
        assert resumed[1:5] == ("done", "", 10, 0), "the browser job ran its remaining pages"
        assert [page[0] for page in pages] == ["done"] * 10, "every page once, none left running"
        assert resumed[5:8] == tuple(sum(page[i] for page in pages) for i in (1, 2, 3)), "usage = sum of its pages"
        for job_id, status, code, done, failed, prompt_tokens, completion_tokens, chars, _estimated in jobs:
            if job_id == live_key:
                continue
            pages = db_rows(
                second,
                "SELECT status, prompt_tokens, completion_tokens, completion_chars, error_code FROM ocr_ocrpage "
                "WHERE job_id = ?",
                job_id,
            )
            assert (status, code) == ("interrupted", "interrupted")
            assert done == sum(1 for page in pages if page[0] == "done") >= 2
            assert done < 10, "killed in the middle of the job"
            assert failed == sum(1 for page in pages if page[0] == "failed")
            assert {page[4] for page in pages if page[0] == "failed"} <= {"interrupted"}
            assert "running" not in {page[0] for page in pages}
            assert prompt_tokens == sum(page[1] for page in pages) > 0
            assert completion_tokens == sum(page[2] for page in pages) > 0
            assert chars == sum(page[3] for page in pages)
        assert asyncio.run(ndjson_request(second, token, "image", PNG)).frames[-1]["status"] == "done"
        assert "marked 3 job(s) of worker" in second.log()
        assert "requeued 1 job(s) of worker" in second.log()
    finally:
        second.stop()
    assert all(stream and stream[0]["type"] == "start" for stream in frames)


def test_a_new_process_never_marks_the_jobs_of_a_live_one(fake, app_server):
    fake.set_default(tokens=20)
    first = app_server(fault_env(fake), name="live-first")
    token = first.register_and_login("ida")
    fake.push_script({"first_token_delay": 6})

    async def slow_job() -> Stream:
        return await ndjson_request(first, token, "image", PNG)

    async def scenario() -> tuple[Stream, list[tuple]]:
        job = asyncio.create_task(slow_job())
        await asyncio.to_thread(
            wait_until, lambda: fake.stats["in_flight"] == 1, timeout=10, what="the slow page reached the engine"
        )
        second = await asyncio.to_thread(app_server, first.env, data_dir=first.data_dir, log_name="server-2.log")
        try:
            # Its first heartbeat (and recovery) runs at start; a few more pass while the job still runs.
            await asyncio.to_thread(
                wait_until, lambda: second.log().count("heartbeat every") >= 1, timeout=10, what="second started"
            )
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    db_rows(second, "SELECT COUNT(*) FROM ocr_worker")[0][0] == 2
                    and db_rows(second, "SELECT MIN(heartbeat_at) FROM ocr_worker")[0][0]
                    > db_rows(second, "SELECT MAX(started_at) FROM ocr_worker")[0][0]
                ),
                timeout=10,
                what="both processes have heartbeats after the second started",
            )
            during = db_rows(second, "SELECT status FROM ocr_ocrjob")
        finally:
            await asyncio.to_thread(second.stop)
        return await job, during

    try:
        stream, during = asyncio.run(scenario())
    finally:
        first.stop()
    assert during == [("running",)], "the second process left the first one's running job alone"
    assert stream.frames[-1]["status"] == "done"
    assert db_rows(first, "SELECT status FROM ocr_ocrjob") == [("done",)]
