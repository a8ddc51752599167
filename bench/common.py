"""Shared machinery for the benchmarks: servers in subprocesses (the tests' own, ``testing.servers``), a low-CPU
raw-socket client, /proc readings.

Benchmarks compare against a baseline measured in the same run: these machines are shared and noisy, so only
ratios mean something.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testing.servers import PYTHON, AppServer, ServerProcess, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- /proc readings ---------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of a multi-process server)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its living descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_bytes(pid: int) -> int:
    return sum(_status_kb(member, "VmRSS:") for member in process_tree(pid))


def peak_rss_bytes(pid: int) -> int:
    return sum(_status_kb(member, "VmHWM:") for member in process_tree(pid))


def reset_peak_rss(pid: int) -> None:
    """Reset the kernel's high-water marks so ``peak_rss_bytes`` measures from now."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


class RssSampler:
    """Samples a process tree's RSS in the background; ``peak`` is the highest reading (and the kernel's HWM).

    The tree is listed once at the start: walking ``/proc`` on every sample would cost the client enough CPU to
    skew what it measures.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._pids: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._pids = process_tree(self.pid)
        reset_peak_rss(self.pid)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, sum(_status_kb(pid, "VmRSS:") for pid in self._pids))
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, sum(_status_kb(pid, "VmHWM:") for pid in self._pids))


# --- servers ----------------------------------------------------------------------------------------------


def log_path(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"myocr-bench-{name}-{os.getpid()}.log"


def fake_engine(
    *, tokens: int, token_delay: float, first_token_delay: float = 0.0, chunk_tokens: int = 1
) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [
            PYTHON,
            "-m",
            "testing.fake_vllm",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tokens",
            str(tokens),
            "--token-delay",
            str(token_delay),
            "--first-token-delay",
            str(first_token_delay),
            "--chunk-tokens",
            str(chunk_tokens),
        ],
        env={},
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=log_path("fake-vllm"),
    )


def control_fake_engine(engine: ServerProcess, **default: object) -> None:
    """Change the fake engine's default behaviour through its control endpoint."""
    port = engine.ready_url.split(":")[2].split("/")[0]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_fake/control",
        data=json.dumps({"default": default}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).read()


@dataclass
class App:
    process: AppServer
    port: int
    token: str
    data_dir: Path


def app_server(env: Mapping[str, str], *, name: str = "app", workers: int = 1) -> App:
    """The tests' ``AppServer`` with production-like settings: a fresh SQLite database is migrated and a user and
    token created, and the server is prepared (not yet running): one Daphne process, or ``workers`` of them on one
    socket (``deploy/serve.py``)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"myocr-bench-{name}-"))
    full_env = {
        "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "OCR_WARMUP": "true",  # as deployed, unless a benchmark says otherwise
        "LOG_LEVEL": "WARNING",
        "OCR_KEEP_UPLOADS": "false",
        # One benchmark user sends all the load: per-user limits would refuse it.
        "OCR_USER_MAX_RUNNING_JOBS": "0",
        "OCR_USER_DAILY_PAGES": "0",
        **env,
    }
    server = AppServer(data_dir, full_env, workers=workers, log_path=log_path(name))
    server.migrate()
    token = server.manage("shell", "-v", "0", "-c", CREATE_TOKEN_SCRIPT).stdout.strip()
    return App(process=server, port=server.port, token=token, data_dir=data_dir)


CREATE_TOKEN_SCRIPT = """
from django.contrib.auth import get_user_model
from accounts.tokens import token_create
user, _ = get_user_model().objects.get_or_create(username="bench")
print(token_create(user=user, name="bench").secret)
"""


# --- a low-CPU HTTP client --------------------------------------------------------------------------------


@dataclass
class StreamResult:
    status: int = 0
    started: float = 0.0
    first_frame: float | None = None
    first_delta: float | None = None
    finished: float = 0.0
    frames: int = 0
    deltas: int = 0
    end: dict | None = None
    error: str | None = None
    lines: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.end is not None


def multipart(file_name: str, data: bytes, fields: Mapping[str, str] | None = None) -> tuple[str, bytes]:
    boundary = "myocr-bench-boundary-7d1f"
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


async def stream_request(
    port: int,
    path: str,
    *,
    method: str = "POST",
    body: bytes = b"",
    content_type: str = "",
    headers: Mapping[str, str] | None = None,
    keep_lines: bool = False,
    delta_marker: bytes = b'delta"',
) -> StreamResult:
    """One HTTP/1.1 request over a raw socket; reads a chunked NDJSON (or SSE) body line by line.

    Counts frames, records the time to the first frame and to the first delta, and parses the last line as the
    ``end`` frame. Costs far less client CPU than an HTTP library, which matters when client, server and
    engine share two cores.
    """
    result = StreamResult(started=time.perf_counter())
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if body:
            head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await reader.readline()
        result.status = int(status_line.split()[1])
        chunked = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        buffer = b""
        last = b""
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                data = data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            now = time.perf_counter()
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if not line:
                    continue
                result.frames += 1
                if result.first_frame is None:
                    result.first_frame = now
                if delta_marker in line:
                    result.deltas += 1
                    if result.first_delta is None:
                        result.first_delta = now
                if keep_lines:
                    result.lines.append(line)
                last = line
        if buffer.strip():
            last = buffer
            result.frames += 1
        result.finished = time.perf_counter()
        if result.status == 200 and last:
            frame = json.loads(last)
            if frame.get("type") == "end":
                result.end = frame
            else:
                result.error = f"stream ended with {frame.get('type')}"
        elif result.status != 200:
            result.error = f"HTTP {result.status}: {last[:200]!r}"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.finished = time.perf_counter()
    finally:
        if writer is not None:
            writer.close()
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def mb(value: float) -> str:
    return f"{value / 1024 / 1024:.0f} MB"


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
