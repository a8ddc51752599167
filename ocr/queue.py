"""The task queue: Dramatiq, on the broker ``OCR_QUEUE_URL`` names (RabbitMQ ``amqp://`` or Redis ``redis://``).

One message per detached job (``ocr/jobs.py``): ``run_job(job_id)``. A worker process (``manage.py ocr_worker``)
takes it and runs the job with the same pipeline as the web process does without a queue; a long PDF's runner
also sends ``run_pages(job_id)`` messages, and the workers that take them read some of its pages
(``ocr/sharing.py``). Why this is safe:

- **Late acknowledgement.** Dramatiq acknowledges a message when its actor returns. A worker killed at any moment
  leaves its messages unacknowledged, and the broker hands them to another worker: RabbitMQ as soon as the dead
  worker's connection closes, Redis when the dead worker's heartbeat is older than ``heartbeat_timeout``. The job
  is then resumed, not restarted: the pages it stored are kept and not sent to the engine again.
- **No retries of a whole job.** The actor itself handles every failure of a page or of the engine (they end as
  page errors and the job's status); a failure that escapes it (the database down) is retried by Dramatiq's
  ``Retries`` middleware with backoff, and resuming is idempotent.
- **No time limit.** A 500-page PDF may run for an hour; the engine's own deadlines (``OCR_ENGINE_*_TIMEOUT``)
  bound each page instead of Dramatiq's ``TimeLimit``.

Without ``OCR_QUEUE_URL`` a ``StubBroker`` is installed, so importing this module (the actor's declaration) never
needs a broker; ``enabled()`` then says no, and jobs run in the web process.
"""

from __future__ import annotations

import logging
from functools import cache

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, AsyncIO, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications

from ocr.config import ocr_config

logger = logging.getLogger(__name__)

QUEUE_NAME = ocr_config().queue_name
#: Dramatiq retries of a job whose actor raised (an infrastructure failure): 1 s, 2 s, 4 s… up to 5 minutes.
MAX_RETRIES = 8


def enabled() -> bool:
    return bool(ocr_config().queue_url)


def _middleware() -> list[dramatiq.Middleware]:
    return [
        AgeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=MAX_RETRIES, min_backoff=1_000, max_backoff=300_000),
        CurrentMessage(),
        AsyncIO(),
    ]


@cache
def broker() -> dramatiq.Broker:
    """The broker for ``OCR_QUEUE_URL`` (set as Dramatiq's global broker)."""
    url = ocr_config().queue_url
    if not url:
        selected: dramatiq.Broker = StubBroker(middleware=_middleware())
    elif url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        # Publisher confirms: a submit answers 202 only once RabbitMQ has the message.
        selected = RabbitmqBroker(url=url, confirm_delivery=True, middleware=_middleware())
    else:
        from dramatiq.brokers.redis import RedisBroker

        # A dead worker's messages go back to the queue once its heartbeat is this old.
        selected = RedisBroker(url=url, heartbeat_timeout=30_000, middleware=_middleware())
    dramatiq.set_broker(selected)
    return selected


broker()


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=MAX_RETRIES)
async def run_job(job_id: str) -> None:
    from ocr.jobs import run_detached_job

    await run_detached_job(job_id)


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=0)
async def run_pages(job_id: str) -> None:
    """Help the runner of ``job_id`` read its pages (``ocr/sharing.py``); optional work, never retried."""
    from ocr.jobs import help_detached_job

    await help_detached_job(job_id)


def enqueue(job_id: object) -> None:
    """Send the message that runs ``job_id``. Blocking (a network round trip): call it off the event loop.
    Raises when the broker cannot take it."""
    run_job.send(str(job_id))


def enqueue_helpers(job_id: object, count: int) -> None:
    """Ask ``count`` more workers to take pages of the running job ``job_id``. Blocking, like ``enqueue``."""
    for _ in range(count):
        run_pages.send(str(job_id))
