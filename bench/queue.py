"""``python -m bench.queue``: the task queue against the in-process runner, and one worker against two.

1. **Latency.** Submit-to-first-delta of single-image jobs (``POST /api/jobs``, then its events) through the queue
   (RabbitMQ, one worker) against the same server without a queue (the web process runs the job), sequentially,
   so that only the hand-over is measured. Target: p50 at most 100 ms more.
2. **Scale-out.** The time to finish a batch of PDFs with one worker and with two (each worker one job at a time,
   four pages in flight, the fake engine's per-page time dominating), and one 200-page PDF with one and two
   workers: its runner shares its pages with the other worker (``ocr/sharing.py``). Target ≤ 0.6 for both.

Needs PostgreSQL, Redis and RabbitMQ on 127.0.0.1 (as CI and these machines have); prints why it skipped if not.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import app_server, fake_engine, log_path, percentile, print_table
from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import PYTHON, ServerProcess, free_port

POSTGRES = "postgres://postgres@127.0.0.1:5432"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS = "redis://127.0.0.1:6379/13"


def reachable() -> str | None:
    for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{name} is not reachable on 127.0.0.1:{port}"
    return None


@contextmanager
def database() -> Iterator[str]:
    import psycopg

    name = f"myocr_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def request(port: int, token: str, method: str, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body or None, method=method, headers=headers)
    with urllib.request.urlopen(call, timeout=600) as response:
        return response.read()


def submit(port: int, token: str, files: list[tuple[str, bytes]]) -> list[str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    answer = json.loads(request(port, token, "POST", "/api/jobs", body, f"multipart/form-data; boundary={boundary}"))
    return [entry["job_id"] for entry in answer["jobs"]]


def first_delta_and_end(port: int, token: str, job_id: str) -> tuple[float, float]:
    """Follow a job's events: (time of its first delta, time of its end), by the perf counter."""
    call = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/jobs/{job_id}/events", headers={"Authorization": f"Bearer {token}"}
    )
    first = None
    with urllib.request.urlopen(call, timeout=600) as response:
        for line in response:
            if not line.strip():
                continue
            frame = json.loads(line)
            if first is None and frame["type"] in ("delta", "page_delta"):
                first = time.perf_counter()
            if frame["type"] == "end":
                return first or time.perf_counter(), time.perf_counter()
    raise RuntimeError(f"the events of {job_id} ended without an end frame")


def worker(env: dict[str, str]) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [PYTHON, "manage.py", "ocr_worker", "--metrics-port", str(port), "--stop-timeout", "1"],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/metrics",
        log_path=log_path("worker"),
    )


def latencies(port: int, token: str, jobs: int) -> list[float]:
    image = SAMPLES["short"].render()
    values = []
    for _ in range(jobs):
        started = time.perf_counter()
        [job_id] = submit(port, token, [("page.png", image)])
        first, _end = first_delta_and_end(port, token, job_id)
        values.append(first - started)
    return values


def finish_time(port: int, token: str, files: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    job_ids = submit(port, token, files)
    for job_id in job_ids:
        first_delta_and_end(port, token, job_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="PDFs of --batch-pages pages in the batch")
    parser.add_argument("--batch-pages", type=int, default=10)
    parser.add_argument("--long-pages", type=int, default=200)
    args = parser.parse_args()
    why = reachable()
    if why:
        print(f"Queue benchmark skipped: {why}")
        return
    # About 0.5 s a page on the fake engine: the engine's time, not the machine's CPU, bounds a worker.
    engine = fake_engine(tokens=40, token_delay=0.01, first_token_delay=0.1).start()
    base = {
        "OCR_ENGINE": "openai",
        "LLM_BASE_URL": engine.ready_url.rsplit("/", 1)[0] + "/v1",
        "OCR_KEEP_UPLOADS": "true",
        "OCR_PAGE_CONCURRENCY": "4",
        "OCR_WORKER_JOBS": "1",
        "OCR_WARMUP": "false",
        "OCR_LIVE_FLUSH_SECONDS": "0.2",
    }
    rows = []
    try:
        with database() as url:
            plain = app_server({**base, "DATABASE_URL": url}, name="inprocess")
            with plain.process.start():
                in_process = latencies(plain.port, plain.token, args.latency_jobs)
        queue_name = f"ocr-bench-{uuid.uuid4().hex[:8]}"
        with database() as url:
            env = {**base, "DATABASE_URL": url, "REDIS_URL": REDIS, "OCR_QUEUE_URL": RABBITMQ}
            env["OCR_QUEUE_NAME"] = queue_name
            app = app_server(env, name="queue")
            worker_env = {**app.process.env}
            batch = [(f"doc-{n}.pdf", make_numbered_pdf(args.batch_pages)) for n in range(args.batch)]
            long = [("long.pdf", make_numbered_pdf(args.long_pages))]
            with app.process.start(), worker(worker_env).start():
                queued = latencies(app.port, app.token, args.latency_jobs)
                one_batch = finish_time(app.port, app.token, batch)
                one_long = finish_time(app.port, app.token, long)
                with worker(worker_env).start():
                    two_batch = finish_time(app.port, app.token, batch)
                    two_long = finish_time(app.port, app.token, long)
    finally:
        engine.stop()
        _delete_queue(queue_name if "queue_name" in locals() else "")
    p50_in, p50_q = statistics.median(in_process), statistics.median(queued)
    rows.append(
        (
            "submit → first delta, in the web process",
            f"p50 {p50_in * 1000:.0f} ms, p95 {percentile(in_process, 95) * 1000:.0f} ms",
        )
    )
    rows.append(
        (
            "submit → first delta, through the queue",
            f"p50 {p50_q * 1000:.0f} ms, p95 {percentile(queued, 95) * 1000:.0f} ms",
        )
    )
    rows.append(("queue hand-over", f"p50 +{(p50_q - p50_in) * 1000:.0f} ms (target ≤ +100 ms)"))
    rows.append(
        (
            f"{args.batch} PDFs of {args.batch_pages} pages",
            f"1 worker {one_batch:.1f} s, 2 workers {two_batch:.1f} s: "
            f"ratio {two_batch / one_batch:.2f} (target ≤ 0.6)",
        )
    )
    rows.append(
        (
            f"one {args.long_pages}-page PDF",
            f"1 worker {one_long:.1f} s, 2 workers {two_long:.1f} s: ratio {two_long / one_long:.2f} (target ≤ 0.6)",
        )
    )
    print_table("Task queue (RabbitMQ, PostgreSQL, Redis; fake engine, about 0.5 s a page)", rows)


def _delete_queue(name: str) -> None:
    if not name:
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ))
    channel = connection.channel()
    for suffix in ("", ".DQ", ".XQ"):
        channel.queue_delete(name + suffix)
    connection.close()


if __name__ == "__main__":
    main()
