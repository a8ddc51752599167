"""End to end over real HTTP: a Daphne server process, the fake vLLM engine, real clients (httpx, curl, sockets)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import httpx
import pytest

from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import AppServer
from testing.waiting import wait_until

from .conftest import AppServers
from .contract import assert_contract

MAX_UPLOAD = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server: AppServers) -> AppServer:
    return module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            "OCR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "OCR_PAGE_CONCURRENCY": "4",
            "OCR_ENGINE_IDLE_TIMEOUT": "5",
        },
        name="server",
    )


@pytest.fixture(scope="module")
def token(server):
    return server.register_and_login("carol")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def finished_job(server: AppServer, token: str, job_id: str) -> dict:
    """The job once it is no longer running."""

    def job_if_finished() -> dict | None:
        job = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=auth(token)).json()
        return job if job["status"] != "running" else None

    return wait_until(job_if_finished, timeout=15, what=f"job {job_id} has ended")


def test_frames_reach_the_client_as_the_engine_produces_them(server, fake, token):
    """The first text reaches the client while the engine is still generating (here: stalled after three chunks,
    longer than the test may take), not all at the end."""
    fake.set_default(tokens=30, stall_after=3, stall_seconds=60)
    frames: list[dict] = []
    with httpx.stream(
        "POST",
        f"{server.url}/api/ocr/image",
        files={"file": ("page.png", SAMPLES["short"].render(), "image/png")},
        headers=auth(token),
        timeout=30,
    ) as response:
        assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        for line in response.iter_lines():
            frames.append(json.loads(line))
            if frames[-1]["type"] == "delta":
                engine_meanwhile = fake.stats
                break  # leaving the block closes the connection

    assert frames[0]["type"] == "start" and frames[-1]["type"] == "delta" and frames[-1]["delta"]
    assert engine_meanwhile["in_flight"] == 1 and engine_meanwhile["completed"] == 0
    fake.wait_for(lambda stats: stats["aborted"] == 1, timeout=10)


def test_a_client_that_disconnects_cancels_the_engine_requests_in_flight(server, fake, token):
    fake.set_default(tokens=400, token_delay=0.05)  # about 20 s per page if nobody stopped it
    with httpx.stream(
        "POST",
        f"{server.url}/api/ocr/pdf",
        files={"file": ("book.pdf", make_numbered_pdf(4), "application/pdf")},
        headers=auth(token),
        timeout=30,
    ) as response:
        seen: set[int] = set()
        job_id = None
        for line in response.iter_lines():
            frame = json.loads(line)
            if frame["type"] == "start":
                job_id = frame["job_id"]
            if frame["type"] == "page_delta":
                seen.add(frame["page"])
            if len(seen) == 4:
                break  # leaving the block closes the connection mid-stream

    stats = fake.wait_for(lambda s: s["aborted"] >= 4, timeout=10)
    assert stats["in_flight"] == 0
    job = finished_job(server, token, job_id)
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "cancelled"
    pages = job["pages_detail"]
    assert len(pages) == 4 and {page["status"] for page in pages} == {"cancelled"}
    assert all(page["text"] for page in pages), "text received before the disconnect is kept"
    assert job["usage"]["completion_tokens"] > 0 and job["usage"]["estimated"] is True


def test_curl_streams_an_image_as_the_readme_shows(server, fake, token, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    fake.set_default(text="Hello from curl")
    image = tmp_path / "page.png"
    image.write_bytes(SAMPLES["short"].render())

    result = subprocess.run(
        [
            curl,
            "-sS",
            "-N",
            "-F",
            f"file=@{image}",
            "-H",
            f"Authorization: Bearer {token}",
            f"{server.url}/api/ocr/image",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )

    frames = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert assert_contract(frames, "image")["status"] == "done"
    assert "".join(f["delta"] for f in frames if f["type"] == "delta") == "Hello from curl"


def raw_request(server: AppServer, head: str, body: bytes = b"") -> bytes:
    """Send raw bytes and read one response with a Content-Length body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        headers, _, rest = answer.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(rest) < length:
            rest += sock.recv(65536)
    return headers + b"\r\n\r\n" + rest


def multipart(data: bytes, boundary: str = "myocr-test-boundary") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n'
            f"Content-Type: application/pdf\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_an_oversized_upload_is_refused_from_its_declared_length(server, token):
    # Daphne receives the whole body before calling the app; the app then refuses it from the headers,
    # without parsing or copying it.
    body = multipart(b"%PDF-1.7\n" + b"0" * (MAX_UPLOAD + 128 * 1024))
    head = (
        "POST /api/ocr/pdf HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=myocr-test-boundary\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )

    answer = raw_request(server, head, body)

    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "file_too_large"


def test_a_chunked_upload_is_refused_with_411(server, token):
    head = (
        "POST /api/ocr/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=myocr-test-boundary\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    body = multipart(b"%PDF-1.7\n")

    answer = raw_request(server, head, f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 411")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "length_required"


def test_the_server_keeps_serving_after_faults(server, fake, token):
    fake.set_default(tokens=20, drop_after=3)
    files = {"file": ("page.png", SAMPLES["short"].render(), "image/png")}
    broken = httpx.post(f"{server.url}/api/ocr/image", files=files, headers=auth(token), timeout=30)
    fake.reset()
    healthy = httpx.post(f"{server.url}/api/ocr/image", files=files, headers=auth(token), timeout=30)

    frames = [json.loads(line) for line in broken.text.splitlines()]
    assert assert_contract(frames, "image")["status"] == "failed"
    frames = [json.loads(line) for line in healthy.text.splitlines()]
    assert assert_contract(frames, "image")["status"] == "done"
