"""Recovery of jobs left running by a process that is gone (``ocr/workers.py``), and never of a live process's."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ocr import workers
from ocr.models import JobStatus, OcrJob, OcrPage, Worker
from ocr.services import WORKER_ID, jobs_interrupt

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

HOST = socket.gethostname()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    return process.pid


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait(10)


def worker_row(pid: int, *, host: str = HOST, namespace: str | None = None, **fields: Any) -> Worker:
    now = timezone.now()
    started = workers.process_started_at(pid) or now - timedelta(hours=1)
    values = {
        "host": host,
        "pid": pid,
        "namespace": workers.process_namespace() if namespace is None else namespace,
        "started_at": started,
        "heartbeat_at": now,
        **fields,
    }
    return Worker.objects.create(id=f"{host}:{pid}", **values)


def running_job(owner: Any, worker: str, *, created_at: Any = None, prompt: str = "Free OCR.") -> OcrJob:
    return OcrJob.objects.create(
        owner=owner,
        kind="pdf",
        file_name="book.pdf",
        content_type="application/pdf",
        engine="openai",
        status=JobStatus.RUNNING,
        page_count=3,
        prompt=prompt,
        worker=worker,
        created_at=created_at or timezone.now(),
    )


def status_of(job: OcrJob) -> str:
    job.refresh_from_db()
    return job.status


def test_a_dead_process_on_this_host_leaves_interrupted_jobs_with_the_usage_so_far(alice, dead_pid):
    row = worker_row(dead_pid)
    job = running_job(alice, row.id)
    finished = timezone.now()
    OcrPage.objects.create(
        job=job, number=1, status="done", text="page one", prompt_tokens=300, completion_tokens=12,
        completion_chars=8, finished_at=finished,
    )  # fmt: skip
    OcrPage.objects.create(job=job, number=2, status="running", text="half of pa", completion_chars=10)

    assert workers.recover_interrupted_jobs() == 1

    job.refresh_from_db()
    assert job.status == JobStatus.INTERRUPTED and job.error_code == "interrupted"
    assert (job.prompt_tokens, job.completion_tokens, job.completion_chars) == (300, 12, 18)
    assert (job.pages_done, job.pages_failed) == (1, 1)
    assert job.prompt_chars == 2 * len("Free OCR.")
    assert job.usage_estimated, "the running page's tokens are unknown"
    assert job.finished_at is not None and job.duration_ms is not None
    page = OcrPage.objects.get(job=job, number=2)
    assert (page.status, page.error_code, page.text) == ("failed", "interrupted", "half of pa")


def test_the_jobs_of_a_live_process_are_left_alone(alice, live_process):
    row = worker_row(live_process.pid)
    job = running_job(alice, row.id)

    assert workers.recover_interrupted_jobs() == 0

    assert status_of(job) == JobStatus.RUNNING


def test_a_pid_taken_by_another_process_means_the_worker_is_gone(alice, live_process):
    # The row's process started an hour before the process that holds the pid now.
    row = worker_row(live_process.pid, started_at=timezone.now() - timedelta(hours=1))
    job = running_job(alice, row.id, created_at=timezone.now() - timedelta(minutes=30))

    assert workers.recover_interrupted_jobs() == 1

    assert status_of(job) == JobStatus.INTERRUPTED


def test_this_process_recovers_the_jobs_of_its_predecessor_with_the_same_id_but_not_its_own(alice):
    previous = running_job(alice, WORKER_ID, created_at=workers.me().started_at - timedelta(minutes=5))
    mine = running_job(alice, WORKER_ID)

    assert workers.recover_interrupted_jobs() == 1

    assert status_of(previous) == JobStatus.INTERRUPTED
    assert status_of(mine) == JobStatus.RUNNING


def test_another_machines_worker_is_gone_only_when_its_heartbeat_is_stale(alice, settings):
    settings.OCR_WORKER_HEARTBEAT_SECONDS = 15
    now = timezone.now()
    fresh = worker_row(
        4242, host="other-host", namespace="other-boot/pid:[1]", heartbeat_at=now - timedelta(seconds=50)
    )
    stale = worker_row(
        4343, host="other-host", namespace="other-boot/pid:[1]", heartbeat_at=now - timedelta(seconds=70)
    )
    alive_job = running_job(alice, fresh.id)
    dead_job = running_job(alice, stale.id)

    assert workers.recover_interrupted_jobs(now) == 1

    assert status_of(alive_job) == JobStatus.RUNNING
    assert status_of(dead_job) == JobStatus.INTERRUPTED


def test_jobs_older_than_their_workers_row_belong_to_an_earlier_process_with_that_id(alice):
    row = worker_row(4444, host="other-host", namespace="other", started_at=timezone.now() - timedelta(minutes=1))
    earlier = running_job(alice, row.id, created_at=timezone.now() - timedelta(hours=2))
    current = running_job(alice, row.id)

    workers.recover_interrupted_jobs()

    assert status_of(earlier) == JobStatus.INTERRUPTED
    assert status_of(current) == JobStatus.RUNNING


def test_a_worker_that_never_recorded_itself_is_judged_by_its_pid_on_this_host_only(alice, dead_pid):
    here = running_job(alice, f"{HOST}:{dead_pid}")
    elsewhere = running_job(alice, f"unknown-host:{dead_pid}")

    workers.recover_interrupted_jobs()

    assert status_of(here) == JobStatus.INTERRUPTED
    assert status_of(elsewhere) == JobStatus.RUNNING, "nothing says the other machine's process is gone"


def test_closing_is_idempotent_and_never_touches_a_job_that_ended(alice, dead_pid):
    row = worker_row(dead_pid)
    job = running_job(alice, row.id)
    done = running_job(alice, row.id)
    OcrJob.objects.filter(pk=done.pk).update(status=JobStatus.DONE, pages_done=3)

    first = jobs_interrupt(job_ids=[job.pk, done.pk])
    second = jobs_interrupt(job_ids=[job.pk, done.pk])

    assert (first, second) == (1, 0)
    assert status_of(done) == JobStatus.DONE
    done.refresh_from_db()
    assert done.pages_done == 3


def test_the_heartbeat_records_this_process(transactional_db):
    workers.heartbeat()
    first = Worker.objects.get(id=WORKER_ID)
    workers.heartbeat(first.heartbeat_at + timedelta(seconds=15))

    row = Worker.objects.get(id=WORKER_ID)
    assert row.heartbeat_at == first.heartbeat_at + timedelta(seconds=15)
    assert row.started_at == first.started_at <= timezone.now()
    assert (row.host, row.pid) == (HOST, workers.me().pid)
