"""The app in real processes, for tests and benchmarks that need real HTTP, real disconnects and real restarts.

- ``ServerProcess``: any subprocess that serves HTTP on loopback, ready once a URL answers 200 (the fake engine, a
  queue worker's metrics port); it records how long it took to answer at all and to be ready, which the startup
  benchmark reports.
- ``AppServer``: ``myocr.asgi`` on a free loopback port with its own data directory and SQLite database; one
  Daphne process, or ``workers`` of them on one socket (``deploy/serve.py``).
- ``WorkerProcess``: ``manage.py ocr_worker`` with the environment of the servers it works for.

Every process runs this checkout's code (``ROOT``), logs to a file, and is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import httpx

from .waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: What a test server runs with unless its environment says otherwise.
TEST_ENV = {
    "DEBUG": "true",
    "SECRET_KEY": "server-tests-secret-key-0123456789abcdefghijkl",
    "OCR_WARMUP": "false",
}
#: Readiness probes go straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class ServerProcess:
    """A subprocess of ``args`` (run in ``ROOT``) that is ready once ``ready_url`` answers 200."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str], ready_url: str, log_path: Path) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.ready_url = ready_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.answered_after = 0.0  # seconds from the start to the first HTTP answer of any status
        self.ready_after = 0.0  # seconds from the start to the first 200 from ready_url

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> Self:
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            self._ready,
            timeout=timeout,
            what=f"{' '.join(self.args[:3])} answers 200 on {self.ready_url}",
            interval=0.01,
            details=lambda: self.log()[-3000:],
        )
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.args[:3]} exited early ({self.process.returncode}):\n{self.log()[-3000:]}")
        try:
            with _DIRECT.open(self.ready_url, timeout=1) as response:
                status = response.status
        except urllib.error.HTTPError as error:  # answering, not ready yet (e.g. 503 while warming up)
            status = error.code
        except OSError:
            return False
        since_start = time.monotonic() - self.started_at
        self.answered_after = self.answered_after or since_start
        if status == 200:
            self.ready_after = since_start
            return True
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppServer(ServerProcess):
    """The app serving ``myocr.asgi`` on a free loopback port with its own data directory and database.

    ``env`` is laid over the process environment and ``TEST_ENV``; ``start()`` migrates the database first.
    """

    def __init__(
        self, data_dir: Path, env: Mapping[str, str], *, workers: int = 1, log_path: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full_env = {
            **TEST_ENV,
            "OCR_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'db.sqlite3'}",
            **env,
        }
        if workers > 1:
            command = [PYTHON, "deploy/serve.py"]
            full_env |= {"WEB_CONCURRENCY": str(workers), "HOST": "127.0.0.1", "PORT": str(self.port)}
            full_env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "metrics"))
        else:
            command = [PYTHON, "-m", "daphne", "-e", f"tcp:port={self.port}:interface=127.0.0.1:backlog=1024"]
            command.append("myocr.asgi:application")
        super().__init__(
            command, env=full_env, ready_url=f"{self.url}/healthz", log_path=log_path or data_dir / "server.log"
        )
        self.migrated = False

    def manage(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``manage.py *args`` with this server's environment (and ``env`` over it); its output is returned."""
        return subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            check=True,
            capture_output=True,
            text=True,
        )

    def migrate(self) -> None:
        # The multiprocess metrics directory belongs to the serving processes, not to a one-off command.
        env = {key: value for key, value in self.env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        self.migrated = True

    def start(self, timeout: float = 60.0) -> Self:
        if not self.migrated:
            self.migrate()
        return super().start(timeout)

    def register_and_login(self, username: str, password: str = "correct horse battery staple") -> str:
        """Register ``username`` through the API and return a fresh bearer token."""
        response = httpx.post(f"{self.url}/api/auth/register", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        response = httpx.post(f"{self.url}/api/auth/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


class WorkerProcess:
    """``manage.py ocr_worker`` in a subprocess, with the environment of the servers it works for."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "manage.py", "ocr_worker", "--stop-timeout", "5"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=timeout, what="the worker says it is running", details=self.log)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log()}")
        return f"OCR worker {self.process.pid}:" in self.log()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def id(self) -> str:
        """How the ledger names this process (``OcrJob.worker``)."""
        return f"{socket.gethostname()}:{self.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        _stop(self.process)
