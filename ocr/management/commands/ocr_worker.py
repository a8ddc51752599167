"""``python manage.py ocr_worker``: run detached OCR jobs from the task queue (``OCR_QUEUE_URL``).

One process runs ``OCR_WORKER_JOBS`` jobs at once on one event loop (Dramatiq's ``AsyncIO`` middleware), each with
up to ``OCR_PAGE_CONCURRENCY`` pages in flight. Start as many as the engine can keep busy, on any machines that
reach the database, Redis, the broker and the uploads' storage.

SIGTERM or Ctrl-C stops taking jobs and gives the running ones ``--stop-timeout`` seconds to end; whatever is
still running then is handed on unacknowledged, and another worker resumes it from its stored pages.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ocr.config import ocr_config

logger = logging.getLogger("ocr.worker")


class Command(BaseCommand):
    help = "Run OCR jobs from the task queue (OCR_QUEUE_URL) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=0, help="Jobs run at once (default: OCR_WORKER_JOBS).")
        parser.add_argument(
            "--stop-timeout", type=float, default=30.0, help="Seconds running jobs get to end at a stop."
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help="Serve this worker's Prometheus metrics on 0.0.0.0:PORT/metrics (default: off).",
        )

    def handle(self, *args: object, **options: object) -> None:
        if not ocr_config().queue_url:
            raise CommandError("OCR_QUEUE_URL is not set: without a queue, jobs run in the web process.")
        from dramatiq import Worker

        from myocr.startup import start_background_tasks
        from ocr import queue

        jobs = int(options["jobs"]) or ocr_config().worker_jobs  # type: ignore[call-overload]
        if options["metrics_port"]:
            from prometheus_client import start_http_server

            start_http_server(int(options["metrics_port"]))  # type: ignore[call-overload]
        # The heartbeat that tells the other processes this one is alive, and the engine's warm-up.
        start_background_tasks()
        broker = queue.broker()
        worker = Worker(broker, queues={queue.QUEUE_NAME}, worker_threads=jobs)
        # One message per job slot: a worker holds no job it cannot start, so an idle worker gets the next one.
        worker.queue_prefetch = jobs
        stop = threading.Event()

        def request_stop(signum: int, _frame: object) -> None:
            logger.info("signal %s: no new jobs; the running ones get %s s", signum, options["stop_timeout"])
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        worker.start()
        from dramatiq.asyncio import get_event_loop_thread

        from ocr.jobs import serve_deliveries

        # Webhooks of jobs that ended here run on the same loop; recovery hands this loop overdue ones.
        serve_deliveries(get_event_loop_thread().loop)
        self.stdout.write(f"OCR worker {os.getpid()}: {jobs} job(s) at once from {_redacted(ocr_config().queue_url)}")
        self.stdout.flush()
        stop.wait()
        timeout_ms = int(float(options["stop_timeout"]) * 1000)  # type: ignore[arg-type]
        worker.stop(timeout=timeout_ms)
        broker.close()
        # Jobs still running are handed on (their messages were not acknowledged); do not wait for them.
        os._exit(0)


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
