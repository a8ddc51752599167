"""Run several Daphne processes on one port (``WEB_CONCURRENCY`` of them, pre-fork style).

Daphne is one process; a host with more cores runs several. This opens one listening socket per worker on the
port (``SO_REUSEPORT``, backlog 1024; the kernel spreads connections over them), starts a ``daphne --fd`` worker
on each and keeps them running. Metrics stay right across the workers through prometheus_client's multiprocess
mode:

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


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def main() -> int:
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - the container's own interface
    port = int(os.environ.get("PORT", "8000"))
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)

    # One socket per worker, all on the same port with SO_REUSEPORT: the kernel spreads new connections over
    # them evenly. (With one shared socket, whichever process wakes first accepts a whole burst.)
    sockets = [listening_socket(host, port) for _ in range(workers)]
    children: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
    stopping = False

    def spawn(slot: int) -> None:
        fd = sockets[slot].fileno()
        command = [sys.executable, "-m", "daphne", "--fd", str(fd), "myocr.asgi:application"]
        child = subprocess.Popen(command, pass_fds=(fd,))  # noqa: S603 - our own command line
        children[child.pid] = (child, slot)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child, _slot in list(children.values()):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers):
        spawn(slot)
    print(f"serving on {host}:{port} with {workers} Daphne processes", flush=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        exited = children.pop(pid, None)
        if exited is None:
            continue
        multiprocess.mark_process_dead(pid)
        if not stopping:
            print(f"worker {pid} exited ({status}); starting another", flush=True)
            time.sleep(1)  # do not spin if workers die at start
            if not stopping:
                spawn(exited[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
