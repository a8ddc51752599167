"""A real Daphne server running the app in a subprocess, for tests that need real HTTP and real disconnects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``daphne`` serving ``myocr.asgi`` on a free loopback port with its own data directory and database."""

    def __init__(self, data_dir: Path, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "DEBUG": "true",
            "SECRET_KEY": "server-tests-secret-key-0123456789abcdefghijkl",
            "OCR_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'db.sqlite3'}",
            "OCR_WARMUP": "false",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-e",
                f"tcp:port={self.port}:interface=127.0.0.1:backlog=1024",
                "myocr.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # polling for readiness, bounded by the deadline
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

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
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "ocr_worker", "--stop-timeout", "5"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while f"OCR worker {self.process.pid}:" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)  # polling for readiness, bounded by the deadline

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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
