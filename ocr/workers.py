"""Processes that run jobs: their heartbeats, whether they are alive, and the jobs of those that are gone.

A job in flight lives in the memory of the process that runs it (``OcrJob.worker`` = ``host:pid``). When that
process dies (a crash, ``kill -9``, a container stopped), its jobs would stay ``running`` forever: the history
would show them running, and they would count against their owner's running-jobs limit. So every process that
runs jobs records itself in ``Worker`` (``host``, ``pid``, the kernel boot and pid namespace it runs in, its start
time) and refreshes ``heartbeat_at`` every ``OCR_WORKER_HEARTBEAT_SECONDS``; a thread does it, with one query.

A job's worker is gone, and the job is handed on (a detached job, ``ocr/jobs.py``: ``queued`` again, its stored
pages kept, ``ocr.services.jobs_requeue``) or marked ``interrupted`` with the usage it recorded so far (a streaming
request's job, whose client went with the process: ``ocr.services.jobs_interrupt``), when:

1. it is this process's own id but the job is older than this process: a previous process with the same host name
   and pid (a restarted container) ran it;
2. the worker's row says it started after the job was created: the id was taken by a newer process since;
3. the worker shares this process's kernel boot and pid namespace, and its pid is not running, or is running
   but started at another time (the pid was reused): the answer is exact, so a restarted server recovers the
   jobs of its dead predecessor as soon as it starts;
4. otherwise (another machine, another container), its heartbeat is older than four heartbeat intervals.

A live process never matches any of these, so a fresh process never marks another live process's jobs, with any
number of processes on any number of hosts. Every process checks at start and then at every heartbeat; several
processes closing the same job is harmless (the update only applies to a job still running).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.db import DatabaseError, close_old_connections
from django.db.models import Min
from django.db.models.functions import Coalesce
from django.utils import timezone

from ocr.config import ocr_config
from ocr.models import JobStatus, OcrJob, Worker
from ocr.services import WORKER_ID, jobs_interrupt, jobs_requeue

logger = logging.getLogger(__name__)

#: A worker silent for this many heartbeat intervals is dead (when its pid cannot be checked).
LEASE_HEARTBEATS = 4
#: Slack between two readings of a process's start time (clock ticks, rounding).
START_TIME_TOLERANCE = timedelta(seconds=2)
PROC = Path("/proc")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def process_namespace() -> str:
    """This kernel boot and pid namespace: processes with the same value can see each other's pids."""
    boot = _read(PROC / "sys/kernel/random/boot_id")
    try:
        pid_namespace = os.readlink(PROC / "self/ns/pid")
    except OSError:
        pid_namespace = ""
    return f"{boot}/{pid_namespace}" if boot and pid_namespace else ""


def _boot_time() -> float | None:
    for line in _read(PROC / "stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def process_started_at(pid: int) -> datetime | None:
    """When process ``pid`` started, from ``/proc``; ``None`` if there is no such process (or no ``/proc``)."""
    stat = _read(PROC / str(pid) / "stat")
    boot = _boot_time()
    if not stat or boot is None:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), tz=UTC)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@dataclass(frozen=True, slots=True)
class Me:
    id: str
    host: str
    pid: int
    namespace: str
    started_at: datetime


def me() -> Me:
    pid = os.getpid()
    started = process_started_at(pid) or _IMPORTED_AT
    return Me(id=WORKER_ID, host=socket.gethostname(), pid=pid, namespace=process_namespace(), started_at=started)


_IMPORTED_AT = timezone.now()


def heartbeat(now: datetime | None = None) -> None:
    """Record (or refresh) this process in ``Worker``."""
    now = now or timezone.now()
    this = me()
    Worker.objects.update_or_create(
        id=this.id,
        defaults={
            "host": this.host,
            "pid": this.pid,
            "namespace": this.namespace,
            "started_at": this.started_at,
            "heartbeat_at": now,
        },
    )


def lease() -> timedelta:
    return timedelta(seconds=ocr_config().worker_heartbeat_seconds * LEASE_HEARTBEATS)


def dead_before(worker_id: str, row: Worker | None, this: Me, now: datetime) -> datetime | None:
    """Jobs of ``worker_id`` created before the returned time belong to a process that is gone (``datetime.max``:
    all of them); ``None``: the worker is alive (or cannot be judged), leave its jobs alone."""
    everything = datetime.max.replace(tzinfo=UTC)
    if worker_id == this.id:
        return this.started_at - START_TIME_TOLERANCE  # rule 1: only a predecessor's jobs
    if row is None:
        # A process that never recorded itself (it predates the Worker table): judge it by its pid when it ran on
        # this host; otherwise it cannot be judged.
        host, _, pid = worker_id.rpartition(":")
        if host != this.host or not pid.isdigit():
            return None
        started = process_started_at(int(pid)) if this.namespace else None
        if started is None:
            return None if pid_alive(int(pid)) else everything
        return started - START_TIME_TOLERANCE  # jobs older than the process now holding that pid are not its
    if this.namespace and row.namespace == this.namespace:  # rule 3
        started = process_started_at(row.pid)
        if started is None or abs(started - row.started_at) > START_TIME_TOLERANCE:
            return everything
        return row.started_at - START_TIME_TOLERANCE  # rule 2 still applies to a reused id
    if row.heartbeat_at < now - lease():  # rule 4
        return everything
    return row.started_at - START_TIME_TOLERANCE  # rule 2


def recover_interrupted_jobs(now: datetime | None = None) -> int:
    """Requeue the detached jobs of processes that are gone and mark their other running jobs interrupted;
    returns how many jobs moved."""
    now = now or timezone.now()
    this = me()
    oldest = dict(
        OcrJob.objects.filter(status=JobStatus.RUNNING)
        .order_by()
        .values("worker")
        .annotate(oldest=Min(Coalesce("claimed_at", "created_at")))
        .values_list("worker", "oldest")
    )
    if not oldest:
        return 0
    rows = Worker.objects.in_bulk(list(oldest))
    closed = 0
    for worker_id, oldest_job in oldest.items():
        cutoff = dead_before(worker_id, rows.get(worker_id), this, now)
        if cutoff is None or oldest_job >= cutoff:
            continue
        # When the process took the job: a queue worker takes over jobs created before it started.
        jobs = OcrJob.objects.annotate(taken=Coalesce("claimed_at", "created_at")).filter(
            status=JobStatus.RUNNING, worker=worker_id, taken__lt=cutoff
        )
        # A detached job with its upload kept runs on with the next runner; a streaming request's job died with
        # its client's connection.
        resumable = list(jobs.filter(detached=True).exclude(upload="").values_list("pk", flat=True))
        others = list(jobs.exclude(pk__in=resumable).values_list("pk", flat=True))
        requeued = jobs_requeue(worker_id=worker_id, job_ids=resumable) if resumable else 0
        count = jobs_interrupt(job_ids=others) if others else 0
        if count:
            logger.warning("marked %d job(s) of worker %s interrupted: the process is gone", count, worker_id)
        if requeued:
            from ocr import metrics

            metrics.queue_event("requeued", requeued)
            logger.warning("requeued %d job(s) of worker %s: the process is gone", requeued, worker_id)
        closed += count + requeued
    return closed


def runners_gone(held: dict[str, datetime], now: datetime | None = None) -> set[str]:
    """The runners among ``held`` (runner id → when it took the oldest page it still holds) that are gone, by the
    rules above; a runner that never recorded itself counts as gone once its oldest page is older than the lease.
    """
    now = now or timezone.now()
    this = me()
    rows = Worker.objects.in_bulk(list(held))
    gone = set()
    for runner, since in held.items():
        cutoff = dead_before(runner, rows.get(runner), this, now)
        if cutoff is None and runner not in rows and runner != this.id:
            cutoff = now - lease()
        if cutoff is not None and since < cutoff:
            gone.add(runner)
    return gone


def forget_old_workers(now: datetime | None = None) -> None:
    """Delete the rows of processes silent for a week that have no running job left."""
    now = now or timezone.now()
    busy = OcrJob.objects.filter(status=JobStatus.RUNNING).values_list("worker", flat=True).distinct()
    Worker.objects.filter(heartbeat_at__lt=now - timedelta(days=7)).exclude(id__in=list(busy)).delete()


# --- the heartbeat thread ---------------------------------------------------------------------------------

_started = threading.Lock()
_thread: threading.Thread | None = None
#: Set after the first heartbeat and recovery of this process.
recovered = threading.Event()


def start_heartbeat() -> None:
    """Record this process, recover the jobs of dead ones, and keep doing both in a daemon thread. Idempotent."""
    global _thread
    with _started:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_run, name="ocr-worker-heartbeat", daemon=True)
        _thread.start()


def _run() -> None:
    interval = ocr_config().worker_heartbeat_seconds
    failures = 0
    while True:
        try:
            heartbeat()
            recovered_jobs = recover_interrupted_jobs()
            from ocr.housekeeping import run_due
            from ocr.jobs import measure_queue, wake_orphans  # the job lifecycle imports the pipeline

            wake_orphans()
            run_due()
            measure_queue()
            if not recovered.is_set():
                forget_old_workers()
                logger.info("worker %s: heartbeat every %s s, %d job(s) recovered", WORKER_ID, interval, recovered_jobs)
            failures = 0
        except Exception as exc:
            failures += 1
            if failures == 1 or not isinstance(exc, DatabaseError):
                logger.exception("worker heartbeat failed (is the database migrated?); retrying")
        finally:
            recovered.set()
            close_old_connections()
        time.sleep(interval)  # the heartbeat's period, not a synchronisation
