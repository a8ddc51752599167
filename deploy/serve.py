"""Run several Daphne processes on one listening socket (``WEB_CONCURRENCY`` of them, pre-fork style).

Daphne is one process; a host with more cores runs several. This opens the socket once (backlog 1024), starts
``WEB_CONCURRENCY`` ``daphne --fd`` workers on it (the kernel hands each connection to one of them) and keeps
them running. Metrics stay right across the workers through prometheus_client's multiprocess mode:

- ``PROMETHEUS_MULTIPROC_DIR`` (required) is emptied before the workers start, so no value of a previous run
  survives;
- a worker that exits is marked dead, which drops its share of the live gauges (in-flight requests, jobs in
  progress), and is replaced.

Several processes need PostgreSQL and Redis (``DATABASE_URL``, ``REDIS_URL``): see README, Deployment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import multiprocess


def main() -> int:
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - the container's own interface
    port = int(os.environ.get("PORT", "8000"))
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)

    listener = socket.create_server((host, port), backlog=1024)
    listener.set_inheritable(True)
    fd = listener.fileno()
    command = [sys.executable, "-m", "daphne", "--fd", str(fd), "myocr.asgi:application"]
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn() -> None:
        child = subprocess.Popen(command, pass_fds=(fd,))  # noqa: S603 - our own command line
        children[child.pid] = child

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in list(children.values()):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    print(f"serving on {host}:{port} with {workers} Daphne processes", flush=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if children.pop(pid, None) is None:
            continue
        multiprocess.mark_process_dead(pid)
        if not stopping:
            print(f"worker {pid} exited ({status}); starting another", flush=True)
            time.sleep(1)  # do not spin if workers die at start
            if not stopping:
                spawn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
