"""Webhooks: a real receiver on loopback, a real server; signatures, retries, refusals of internal addresses."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ocr.webhooks import InvalidCallbackUrl, check_url, resolve, signature
from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import AppServer
from testing.waiting import wait_until

from .conftest import AppServers

PNG = SAMPLES["short"].render()


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ocr?source=test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver([500])
    yield receiver
    receiver.close()


@pytest.fixture
def server(app_server: AppServers, fake: Any) -> AppServer:
    fake.set_default(tokens=10, token_delay=0.005, first_token_delay=0.01)
    return app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake.base_url,
            "OCR_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
            "OCR_WEBHOOK_RETRY_SECONDS": "0.2",
            "OCR_WEBHOOK_TIMEOUT_SECONDS": "2",
        },
        name="webhooks",
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_webhook_arrives_once_signed_and_is_retried_after_a_500(server, receiver):
    token = server.register_and_login("yara")
    response = httpx.post(
        f"{server.url}/api/jobs",
        headers=auth(token),
        data={"callback_url": receiver.url},
        files=[("file", ("doc.pdf", make_numbered_pdf(3)))],
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["jobs"][0]["job_id"]
    wait_until(lambda: len(receiver.received) >= 2, timeout=30, what="the webhook was retried after the 500")
    secret = httpx.get(f"{server.url}/api/users/me/webhook", headers=auth(token)).json()["secret"]
    assert [status for _headers, _body, status in receiver.received] == [500, 200]
    for headers, body, _status in receiver.received:
        timestamp, digest = (part.split("=", 1)[1] for part in headers["X-MyOCR-Signature"].split(","))
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(digest, expected), "signed with the owner's secret over timestamp and body"
        assert abs(int(timestamp) - time.time()) < 600
        payload = json.loads(body)
        assert payload["event"] == "job.finished" and payload["job"]["id"] == job_id
        assert payload["job"]["status"] == "done" and len(payload["job"]["pages_detail"]) == 3
    first, second = receiver.received
    assert first[0]["X-MyOCR-Delivery"] == second[0]["X-MyOCR-Delivery"], "one delivery, two attempts"
    deliveries = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=auth(token)).json()["webhook"]
    assert deliveries == {"url": receiver.url, "state": "delivered", "attempts": 2, "last_status_code": 200}


def test_a_rotated_secret_signs_the_next_webhooks(server, receiver):
    token = server.register_and_login("zeno")
    before = httpx.get(f"{server.url}/api/users/me/webhook", headers=auth(token)).json()["secret"]
    rotated = httpx.post(f"{server.url}/api/users/me/webhook/rotate", headers=auth(token))
    assert rotated.status_code == 200
    after = rotated.json()["secret"]
    assert after != before and after.startswith("whsec_")
    assert httpx.get(f"{server.url}/api/users/me/webhook", headers=auth(token)).json()["secret"] == after


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/hook", "http"),
        ("http:///nohost", "http"),
        ("http://user:pw@example.com/", "user name"),
        ("http://example.com:99999/", "port"),
    ],
)
def test_callback_urls_of_the_wrong_shape_are_refused(url, why):
    with pytest.raises(InvalidCallbackUrl) as error:
        check_url(url)
    assert why in error.value.message and error.value.code == "invalid_callback_url"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]"]
)
def test_internal_addresses_are_refused(host, settings):
    settings.OCR_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidCallbackUrl) as error:
        resolve(check_url(f"http://{host}/hook"))
    assert "public" in error.value.message


def test_a_host_name_that_resolves_to_loopback_is_refused(settings):
    settings.OCR_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidCallbackUrl):
        resolve("http://localhost:8080/hook")


def test_the_submission_refuses_an_internal_callback_and_keeps_nothing(app_server, fake):
    server = app_server({"OCR_ENGINE": "openai", "LLM_BASE_URL": fake.base_url}, name="webhooks-refused")
    token = server.register_and_login("abel")
    response = httpx.post(
        f"{server.url}/api/jobs",
        headers=auth(token),
        data={"callback_url": "http://127.0.0.1:9/hook"},
        files=[("file", ("a.png", PNG))],
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_callback_url"
    listed = httpx.get(f"{server.url}/api/jobs", headers=auth(token)).json()
    assert listed["total"] == 0


def test_signature_format():
    assert signature("s3cret", 1700000000, b"{}") == (
        "t=1700000000,v1=" + hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    )
