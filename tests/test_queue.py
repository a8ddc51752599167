"""The task queue with real processes: Daphne servers and ``ocr_worker`` processes on PostgreSQL, RabbitMQ (or
Redis) as the broker, Redis as the channel layer, and the fake vLLM server as the engine.

Each test gets its own database and its own queue name, so runs sharing the brokers never see each other's jobs.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import AppServer, WorkerProcess, free_port
from testing.waiting import wait_until

from .contract import streamed_text
from .test_webhooks import Receiver

POSTGRES = "postgres://postgres@127.0.0.1:5432"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS = "redis://127.0.0.1:6379/11"
PNG = SAMPLES["short"].render()


def _reachable() -> str | None:
    import socket

    for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{name} is not reachable on 127.0.0.1:{port}"
    return None


pytestmark = pytest.mark.skipif(_reachable() is not None, reason=str(_reachable()))


@pytest.fixture
def database() -> Iterator[str]:
    import psycopg

    name = f"myocr_queue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES}/{name}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Cluster:
    """Web servers and workers sharing one database, broker queue and channel layer."""

    def __init__(self, tmp_path: Path, database: str, engine: Any, broker: str, **env: str) -> None:
        self.tmp_path = tmp_path
        self.database = database
        self.queue_name = f"ocr-test-{uuid.uuid4().hex[:12]}"
        self.broker = broker
        self.env = {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": engine.base_url,
            "OCR_ENGINE_IDLE_TIMEOUT": "10",
            "OCR_ENGINE_FIRST_TOKEN_TIMEOUT": "20",
            "OCR_USER_MAX_RUNNING_JOBS": "0",
            "OCR_USER_DAILY_PAGES": "0",
            "OCR_WORKER_HEARTBEAT_SECONDS": "1",
            "OCR_LIVE_FLUSH_SECONDS": "0.2",
            # The sign-in and registration limits count in the cache (Redis), which outlives each test's database.
            "OCR_REGISTER_MAX_PER_IP": "100000",
            "DATABASE_URL": database,
            "REDIS_URL": REDIS,
            "OCR_QUEUE_URL": broker,
            "OCR_QUEUE_NAME": self.queue_name,
            "OCR_PAGE_CONCURRENCY": "4",
            **env,
        }
        self.servers: list[AppServer] = []
        self.workers: list[WorkerProcess] = []

    def server(self) -> AppServer:
        data_dir = self.tmp_path / "shared"  # one uploads volume for every process, as on a shared mount
        data_dir.mkdir(exist_ok=True)
        server = AppServer(data_dir, self.env)
        server.env["DATABASE_URL"] = self.database  # AppServer defaults to its own SQLite file
        server.log_path = self.tmp_path / f"server-{len(self.servers) + 1}.log"
        server.start()
        self.servers.append(server)
        return server

    def worker(self) -> WorkerProcess:
        env = {**self.servers[0].env} if self.servers else {**self.env}
        worker = WorkerProcess(env, self.tmp_path / f"worker-{len(self.workers) + 1}.log")
        worker.start()
        self.workers.append(worker)
        return worker

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.database) as connection:
            return connection.execute(sql, params).fetchall()

    def close(self) -> None:
        for process in [*self.workers, *self.servers]:
            process.stop()
        if self.broker.startswith("amqp"):
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(self.broker))
            channel = connection.channel()
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(self.queue_name + suffix)
            connection.close()


@pytest.fixture
def cluster(tmp_path: Path, database: str, fake: Any) -> Iterator[Cluster]:
    fake.set_default(tokens=12, token_delay=0.01, first_token_delay=0.01)
    cluster = Cluster(tmp_path, database, fake, RABBITMQ)
    try:
        yield cluster
    finally:
        cluster.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(server: AppServer, token: str, *files: tuple[str, bytes], expect: int = 202) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{server.url}/api/jobs",
        headers=auth(token),
        files=[("file", (name, data, "application/octet-stream")) for name, data in files],
        timeout=30,
    )
    assert response.status_code == expect, response.text
    return response.json().get("jobs", [response.json()])


def job(server: AppServer, token: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=auth(token), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def events(server: AppServer, token: str, job_id: str, *, after: int = 0, stop_after: int | None = None) -> list[dict]:
    """The job's frames from ``after`` on; with ``stop_after``, disconnect after that many frames."""
    frames: list[dict[str, Any]] = []
    url = f"{server.url}/api/jobs/{job_id}/events?after={after}"
    with httpx.stream("GET", url, headers=auth(token), timeout=60) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if not line:
                continue
            frames.append(json.loads(line))
            if frames[-1]["type"] == "end" or (stop_after is not None and len(frames) >= stop_after):
                break
    return frames


def assert_stream(frames: list[dict[str, Any]], pages: int) -> None:
    """One ``end`` last, strictly increasing seqs, and for every page exactly one ``page_end``."""
    seqs = [frame["seq"] for frame in frames]
    assert seqs == sorted(set(seqs)), "seq strictly increases, without duplicates"
    assert frames[-1]["type"] == "end" and [frame["type"] for frame in frames].count("end") == 1
    ended = [frame["page"] for frame in frames if frame["type"] == "page_end"]
    assert sorted(ended) == list(range(1, pages + 1)), "every page ends exactly once"


def ledger(cluster: Cluster, job_id: str) -> tuple[tuple, list[tuple]]:
    key = job_id
    job_row = cluster.rows(
        "SELECT status, pages_done, pages_failed, prompt_tokens, completion_tokens, completion_chars "
        "FROM ocr_ocrjob WHERE id = %s",
        key,
    )[0]
    pages = cluster.rows(
        "SELECT number, status, prompt_tokens, completion_tokens, completion_chars FROM ocr_ocrpage "
        "WHERE job_id = %s ORDER BY number",
        key,
    )
    return job_row, pages


def assert_ledger_sums(cluster: Cluster, job_id: str, pages: int) -> None:
    job_row, page_rows = ledger(cluster, job_id)
    assert job_row[0] == "done"
    assert [row[0] for row in page_rows] == list(range(1, pages + 1)), "every page once in the ledger"
    assert {row[1] for row in page_rows} == {"done"}
    assert job_row[1:3] == (pages, 0)
    for index, column in ((3, 2), (4, 3), (5, 4)):
        assert job_row[index] == sum(row[column] for row in page_rows) > 0, "usage is the sum of its pages"


def test_a_pdf_and_a_batch_of_images_run_on_two_workers_and_stream_through_either_server(cluster, fake):
    first, second = cluster.server(), cluster.server()
    workers = [cluster.worker(), cluster.worker()]
    token = first.register_and_login("quinn")
    [pdf] = submit(first, token, ("report.pdf", make_numbered_pdf(60)))
    images = submit(second, token, *[(f"scan-{n}.png", PNG) for n in range(20)])
    assert pdf["status"] == "queued" and {entry["status"] for entry in images} == {"queued"}
    frames = events(second, token, pdf["job_id"])  # followed through the server that did not take it
    assert_stream(frames, 60)
    assert frames[0]["type"] == "start" and frames[0]["pages"] == 60
    assert_ledger_sums(cluster, pdf["job_id"], 60)
    for entry in images:
        image_frames = events(first, token, entry["job_id"])
        assert image_frames[-1]["status"] == "done"
        assert "page_start" not in {frame["type"] for frame in image_frames}, "image jobs keep the image frames"
    ran_on = {row[0] for row in cluster.rows("SELECT DISTINCT worker FROM ocr_ocrjob")}
    assert ran_on == {worker.id for worker in workers}, "both workers ran jobs"
    listed = httpx.get(f"{first.url}/api/jobs?kind=image&page_size=5", headers=auth(token)).json()
    assert listed["total"] == 20 and len(listed["jobs"]) == 5 and listed["has_next"]


def test_a_worker_killed_in_the_middle_of_a_pdf_loses_nothing_and_counts_nothing_twice(cluster, fake):
    server = cluster.server()
    first = cluster.worker()
    token = server.register_and_login("rosa")
    fake.set_default(tokens=20, token_delay=0.02, first_token_delay=0.01)
    [entry] = submit(server, token, ("long.pdf", make_numbered_pdf(40)))
    job_id = entry["job_id"]
    seen: list[dict[str, Any]] = []
    follower = threading.Thread(target=lambda: seen.extend(events(server, token, job_id)), daemon=True)
    follower.start()
    wait_until(
        lambda: (
            cluster.rows("SELECT COUNT(*) FROM ocr_ocrpage WHERE job_id = %s AND status = 'done'", job_id)[0][0] >= 10
        ),
        timeout=60,
        what="ten pages stored",
    )
    first.kill()
    # The state at the kill: pages stored, and engine requests sent (each for a stored page or one in flight).
    stored = cluster.rows("SELECT COUNT(*) FROM ocr_ocrpage WHERE job_id = %s AND status = 'done'", job_id)[0][0]
    requested = len(fake.requests)
    second = cluster.worker()
    follower.join(120)
    assert not follower.is_alive(), "the follower saw the job end"
    assert_stream(seen, 40)
    assert seen[-1]["status"] == "done"
    assert_ledger_sums(cluster, job_id, 40)
    assert cluster.rows("SELECT worker FROM ocr_ocrjob WHERE id = %s", job_id)[0][0] == second.id
    in_flight_at_kill = requested - stored
    assert stored >= 10 and in_flight_at_kill <= 4
    assert len(fake.requests) == requested + (40 - stored), "stored pages were not sent to the engine again"
    assert len(fake.requests) <= 40 + in_flight_at_kill


def page_texts(frames: list[dict[str, Any]]) -> dict[int, str]:
    """Each page's text as a client of the frames shows it (``streamed_text``), for the pages that have text."""
    numbers = {frame["page"] for frame in frames if frame["type"] == "page_delta"}
    texts = {number: streamed_text(frames, number) for number in numbers}
    return {number: text for number, text in texts.items() if text}


def stored_texts(cluster: Cluster, job_id: str) -> dict[int, str]:
    rows = cluster.rows("SELECT number, text FROM ocr_ocrpage WHERE job_id = %s", job_id)
    return {number: text for number, text in rows if text}


@pytest.fixture
def sharing(tmp_path: Path, database: str, fake: Any) -> Iterator[Cluster]:
    """Workers that run one job at a time each, so a second worker is free to help with a long PDF."""
    fake.set_default(tokens=12, token_delay=0.01, first_token_delay=0.01)
    cluster = Cluster(tmp_path, database, fake, RABBITMQ, OCR_WORKER_JOBS="1", OCR_JOB_SHARE_POLL_SECONDS="0.3")
    try:
        yield cluster
    finally:
        cluster.close()


def test_a_long_pdf_is_read_by_two_workers_at_once_and_streams_as_one(sharing, fake):
    server = sharing.server()
    workers = [sharing.worker(), sharing.worker()]
    token = server.register_and_login("petra")
    [entry] = submit(server, token, ("long.pdf", make_numbered_pdf(200)))
    job_id = entry["job_id"]
    frames = events(server, token, job_id)
    assert_stream(frames, 200)
    assert frames[-1]["status"] == "done"
    assert [frame["type"] for frame in frames].count("page_start") == 200, "every page starts once"
    assert_ledger_sums(sharing, job_id, 200)
    assert page_texts(frames) == stored_texts(sharing, job_id), "the stream carries every page's whole text"
    readers = dict(sharing.rows("SELECT runner, COUNT(*) FROM ocr_ocrpage WHERE job_id = %s GROUP BY runner", job_id))
    assert set(readers) == {worker.id for worker in workers}, "both workers read pages of the one job"
    assert len(fake.requests) == 200, "no page was sent to the engine twice"
    assert frames[-1]["usage"]["completion_tokens"] == sum(row[3] for row in ledger(sharing, job_id)[1]), (
        "the end frame's usage counts the helper's pages too"
    )
    replay = events(server, token, job_id)
    assert replay == frames, "the event log holds the same frames"


def test_a_helper_killed_in_the_middle_of_a_pdf_loses_nothing_and_counts_nothing_twice(sharing, fake):
    server = sharing.server()
    workers = [sharing.worker(), sharing.worker()]
    token = server.register_and_login("quentin")
    fake.set_default(tokens=20, token_delay=0.02, first_token_delay=0.01)
    [entry] = submit(server, token, ("long.pdf", make_numbered_pdf(80)))
    job_id = entry["job_id"]
    seen: list[dict[str, Any]] = []
    follower = threading.Thread(target=lambda: seen.extend(events(server, token, job_id)), daemon=True)
    follower.start()

    def helper_pages() -> int:
        lead = sharing.rows("SELECT worker FROM ocr_ocrjob WHERE id = %s", job_id)[0][0]
        return sharing.rows(
            "SELECT COUNT(*) FROM ocr_ocrpage WHERE job_id = %s AND status = 'done' AND runner <> %s", job_id, lead
        )[0][0]

    wait_until(lambda: helper_pages() >= 5, timeout=60, what="the helper stored five pages")
    lead = sharing.rows("SELECT worker FROM ocr_ocrjob WHERE id = %s", job_id)[0][0]
    [helper] = [worker for worker in workers if worker.id != lead]
    helper.kill()
    follower.join(120)
    assert not follower.is_alive(), "the follower saw the job end"
    assert_stream(seen, 80)
    assert seen[-1]["status"] == "done"
    assert_ledger_sums(sharing, job_id, 80)
    assert page_texts(seen) == stored_texts(sharing, job_id), "pages the helper left are told whole"
    # Each page was read once, but for those the helper was reading when it was killed (four at most).
    assert 80 <= len(fake.requests) <= 84


def test_cancel_stops_every_worker_reading_a_shared_pdf(sharing, fake):
    server = sharing.server()
    sharing.worker(), sharing.worker()
    token = server.register_and_login("rune")
    fake.set_default(tokens=400, token_delay=0.05, first_token_delay=0.01)  # 20 s a page: still running
    [entry] = submit(server, token, ("slow.pdf", make_numbered_pdf(40)))
    wait_until(lambda: fake.stats["in_flight"] >= 8, timeout=30, what="both workers stream four pages each")
    response = httpx.post(f"{server.url}/api/jobs/{entry['job_id']}/cancel", headers=auth(token))
    assert response.status_code == 202, response.text
    wait_until(lambda: fake.stats["in_flight"] == 0, timeout=10, what="every engine request stopped")
    wait_until(
        lambda: job(server, token, entry["job_id"])["status"] == "cancelled", timeout=10, what="the job is cancelled"
    )
    statuses = dict(
        sharing.rows("SELECT status, COUNT(*) FROM ocr_ocrpage WHERE job_id = %s GROUP BY status", entry["job_id"])
    )
    assert statuses == {"cancelled": 8}, "the pages both workers were reading end cancelled"
    assert len(fake.requests) == 8, "nothing was started after the cancel"


def test_events_resume_after_any_seq_without_gap_or_duplicate(cluster, fake):
    server = cluster.server()
    cluster.worker()
    token = server.register_and_login("sven")
    [entry] = submit(server, token, ("doc.pdf", make_numbered_pdf(12)))
    head = events(server, token, entry["job_id"], stop_after=25)
    tail = events(server, token, entry["job_id"], after=head[-1]["seq"])
    whole = events(server, token, entry["job_id"])
    assert_stream(head + tail, 12)
    assert head + tail == whole, "the resumed stream is exactly the rest of the whole one"


def test_cancel_from_the_other_server_stops_the_worker_s_engine_requests(cluster, fake):
    first, second = cluster.server(), cluster.server()
    cluster.worker()
    token = first.register_and_login("tove")
    fake.set_default(tokens=400, token_delay=0.05, first_token_delay=0.01)  # 20 s a page: still running
    [entry] = submit(first, token, ("slow.pdf", make_numbered_pdf(8)))
    wait_until(lambda: fake.stats["in_flight"] >= 4, timeout=30, what="the worker streams four pages")
    response = httpx.post(f"{second.url}/api/jobs/{entry['job_id']}/cancel", headers=auth(token))
    assert response.status_code == 202, response.text
    wait_until(lambda: fake.stats["in_flight"] == 0, timeout=10, what="the engine requests stopped")
    wait_until(
        lambda: job(first, token, entry["job_id"])["status"] == "cancelled", timeout=10, what="the job is cancelled"
    )
    again = httpx.post(f"{second.url}/api/jobs/{entry['job_id']}/cancel", headers=auth(token))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_a_job_queued_while_no_worker_runs_waits_and_a_restarted_web_server_follows_it(cluster, fake):
    first = cluster.server()
    token = first.register_and_login("ulla")
    [entry] = submit(first, token, ("waiting.pdf", make_numbered_pdf(6)))
    assert job(first, token, entry["job_id"])["status"] == "queued"
    first.stop()
    second = cluster.server()  # every web process restarted
    cluster.worker()
    frames = events(second, token, entry["job_id"])
    assert_stream(frames, 6)
    assert frames[-1]["status"] == "done"


def test_every_web_process_restarted_mid_job_changes_nothing_for_the_job_or_its_followers(cluster, fake):
    first = cluster.server()
    cluster.worker()
    token = first.register_and_login("viggo")
    fake.set_default(tokens=20, token_delay=0.02, first_token_delay=0.01)
    [entry] = submit(first, token, ("long.pdf", make_numbered_pdf(30)))
    job_id = entry["job_id"]
    head = events(first, token, job_id, stop_after=40)
    assert head[-1]["type"] != "end", "the job still runs"
    first.stop()
    second = cluster.server()  # every web process restarted while the worker reads the job
    tail = events(second, token, job_id, after=head[-1]["seq"])
    assert_stream(head + tail, 30)
    assert tail[-1]["status"] == "done"
    assert_ledger_sums(cluster, job_id, 30)
    assert page_texts(head + tail) == stored_texts(cluster, job_id), "the stream resumed without a gap"


def test_a_broker_that_is_down_refuses_the_submission_and_keeps_nothing(tmp_path, database, fake):
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    cluster = Cluster(tmp_path, database, fake, down)
    try:
        server = cluster.server()
        token = server.register_and_login("vera")
        response = httpx.post(
            f"{server.url}/api/jobs", headers=auth(token), files=[("file", ("a.pdf", make_numbered_pdf(2)))]
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "queue_unavailable"
        assert cluster.rows("SELECT COUNT(*) FROM ocr_ocrjob") == [(0,)]
        uploads = list((tmp_path / "shared").rglob("uploads/**/*.pdf"))
        assert uploads == [], "the upload was not kept"
    finally:
        for process in cluster.servers:
            process.stop()


def test_a_job_whose_upload_is_gone_fails_clearly_and_the_others_go_on(cluster, fake):
    server = cluster.server()
    token = server.register_and_login("wim")
    [lost] = submit(server, token, ("lost.pdf", make_numbered_pdf(2)))
    [kept] = submit(server, token, ("kept.pdf", make_numbered_pdf(2)))
    for path in (cluster.tmp_path / "shared").rglob(f"{lost['job_id']}.pdf"):
        path.unlink()
    cluster.worker()
    assert events(server, token, kept["job_id"])[-1]["status"] == "done"
    failed = events(server, token, lost["job_id"])
    assert failed[-1]["status"] == "failed" and failed[-1]["error"]["code"] == "upload_unreadable"


def test_the_redis_broker_runs_jobs_too(tmp_path, database, fake):
    fake.set_default(tokens=12, token_delay=0.01, first_token_delay=0.01)
    cluster = Cluster(tmp_path, database, fake, "redis://127.0.0.1:6379/12")
    try:
        server = cluster.server()
        cluster.worker()
        token = server.register_and_login("xena")
        [entry] = submit(server, token, ("r.pdf", make_numbered_pdf(5)))
        frames = events(server, token, entry["job_id"])
        assert_stream(frames, 5)
        assert frames[-1]["status"] == "done"
    finally:
        cluster.close()


def test_a_worker_sends_the_webhook_of_the_job_it_ran(tmp_path, database, fake):
    fake.set_default(tokens=12, token_delay=0.01, first_token_delay=0.01)
    receiver = Receiver([])
    cluster = Cluster(tmp_path, database, fake, RABBITMQ, OCR_WEBHOOK_ALLOW_PRIVATE="true")
    try:
        server = cluster.server()
        worker = cluster.worker()
        token = server.register_and_login("yusuf")
        response = httpx.post(
            f"{server.url}/api/jobs",
            headers=auth(token),
            data={"callback_url": receiver.url},
            files=[("file", ("w.pdf", make_numbered_pdf(2)))],
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["jobs"][0]["job_id"]
        assert events(server, token, job_id)[-1]["status"] == "done"
        wait_until(lambda: receiver.received, timeout=30, what="the webhook arrived")
        [(_headers, body, status)] = receiver.received
        assert status == 200 and json.loads(body)["job"]["id"] == job_id
        assert cluster.rows("SELECT worker FROM ocr_ocrjob WHERE id = %s", job_id)[0][0] == worker.id
        state = job(server, token, job_id)["webhook"]
        assert state["state"] == "delivered" and state["attempts"] == 1
    finally:
        receiver.close()
        cluster.close()


def test_the_failed_pages_of_a_job_are_retried_on_their_own(cluster, fake):
    server = cluster.server()
    cluster.worker()
    token = server.register_and_login("zora")
    fake.set_default(fail_status=400)  # a refusal the engine does not retry: the pages fail at once
    fake.push_script({"fail_status": None, "tokens": 12})
    [entry] = submit(server, token, ("mixed.pdf", make_numbered_pdf(3)))
    first = events(server, token, entry["job_id"])
    assert first[-1]["status"] == "partial" and first[-1]["pages_failed"] == 2
    [kept] = [frame["page"] for frame in first if frame["type"] == "page_end" and frame["status"] == "done"]
    kept_text = job(server, token, entry["job_id"])["pages_detail"][kept - 1]["text"]
    fake.reset()
    fake.set_default(tokens=12, token_delay=0.01, first_token_delay=0.01)
    response = httpx.post(f"{server.url}/api/jobs/{entry['job_id']}/retry", headers=auth(token))
    assert response.status_code == 202 and response.json()["pages"] == 2
    again = events(server, token, entry["job_id"])
    assert_stream(again, 3)  # the kept page is told again, once, after a new start
    assert again[-1]["status"] == "done"
    assert len(fake.requests) == 2, "only the failed pages went to the engine"
    assert_ledger_sums(cluster, entry["job_id"], 3)
    assert job(server, token, entry["job_id"])["pages_detail"][kept - 1]["text"] == kept_text
    refused = httpx.post(f"{server.url}/api/jobs/{entry['job_id']}/retry", headers=auth(token))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "nothing_to_retry"
