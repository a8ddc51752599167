"""Abuse limits: jobs running at once and pages per day per user (429 + Retry-After), staff overrides in the admin,
and brute-force limits on signing in and registering (per process, and across processes with Redis)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext

from accounts import ratelimit
from accounts.limits import day_start, job_allowance, seconds_until_tomorrow
from accounts.models import UserLimits
from ocr.models import JobStatus, OcrJob
from ocr.services import _create_job
from testing.documents import SAMPLES, make_numbered_pdf

from .conftest import PASSWORD, make_user
from .contract import assert_contract

pytestmark = [pytest.mark.django_db(transaction=True)]
ledger = pytest.mark.postgres  # the ledger queries: run again on PostgreSQL by `make test-postgres`

PNG = SAMPLES["short"].render()


def make_job(owner: Any, *, status: str = JobStatus.DONE, pages: int = 1, pages_done: int | None = None, **fields):
    return OcrJob.objects.create(
        owner=owner,
        kind="pdf" if pages > 1 else "image",
        file_name="old.pdf",
        content_type="application/pdf",
        engine="openai",
        status=status,
        page_count=pages,
        pages_done=pages if pages_done is None else pages_done,
        **fields,
    )


amake_job = sync_to_async(make_job)


async def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = json.loads(response.content)
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


# --- jobs running at once ---------------------------------------------------------------------------------


@ledger
async def test_a_user_at_the_running_jobs_limit_gets_429_with_retry_after(settings, fake_vllm, alice, api, tmp_path):
    settings.OCR_USER_MAX_RUNNING_JOBS = 2
    settings.MEDIA_ROOT = tmp_path
    for _ in range(2):
        await amake_job(alice, status=JobStatus.RUNNING)

    response = await api.post_file("image", PNG, name="page.png")

    await refused(response, 429, "too_many_jobs")
    assert int(response["Retry-After"]) >= 1
    assert await OcrJob.objects.filter(owner=alice).acount() == 2, "no job was created"
    assert not any(tmp_path.rglob("*.png")), "the refused upload was not kept"


async def test_finished_jobs_and_other_users_jobs_do_not_count_as_running(settings, fake_vllm, alice, bob, api):
    settings.OCR_USER_MAX_RUNNING_JOBS = 2
    await amake_job(alice, status=JobStatus.RUNNING)
    await amake_job(alice, status=JobStatus.DONE)
    await amake_job(alice, status=JobStatus.INTERRUPTED)
    await amake_job(bob, status=JobStatus.RUNNING)
    await amake_job(bob, status=JobStatus.RUNNING)

    response, frames = await api.ocr("image", PNG, name="page.png")

    assert response.status_code == 200
    assert assert_contract(frames, "image")["status"] == "done"


# --- pages per day ----------------------------------------------------------------------------------------


async def test_a_pdf_over_the_daily_page_quota_gets_429_until_midnight(settings, fake_vllm, alice, api):
    settings.OCR_USER_DAILY_PAGES = 5
    await amake_job(alice, pages=4)

    response = await api.post_file("pdf", make_numbered_pdf(2), name="two.pdf")

    await refused(response, 429, "daily_quota_exceeded")
    retry_after = int(response["Retry-After"])
    assert abs(retry_after - seconds_until_tomorrow()) <= 5
    assert 1 <= retry_after <= 24 * 60 * 60


async def test_what_is_left_of_the_quota_can_still_be_used(settings, fake_vllm, alice, api):
    settings.OCR_USER_DAILY_PAGES = 5
    await amake_job(alice, pages=4)

    response, frames = await api.ocr("image", PNG, name="page.png")

    assert response.status_code == 200
    assert assert_contract(frames, "image")["status"] == "done"


@ledger
async def test_the_quota_counts_running_pages_and_pages_read_but_not_yesterday_or_failed_pages(settings, alice):
    settings.OCR_USER_DAILY_PAGES = 100
    await amake_job(alice, status=JobStatus.RUNNING, pages=10, pages_done=2)  # 10: about to be read
    await amake_job(alice, status=JobStatus.PARTIAL, pages=10, pages_done=6, pages_failed=4)  # 6 read
    await amake_job(alice, status=JobStatus.CANCELLED, pages=50, pages_done=1)  # 1 read
    await amake_job(alice, pages=20, created_at=day_start() - timedelta(seconds=1))  # yesterday

    allowance = await sync_to_async(job_allowance)(owner=alice)

    assert allowance.pages_today == 10 + 6 + 1
    assert allowance.running_jobs == 1


async def test_a_document_larger_than_the_whole_quota_is_refused_as_unprocessable(settings, fake_vllm, alice, api):
    settings.OCR_USER_DAILY_PAGES = 2

    response = await api.post_file("pdf", make_numbered_pdf(3), name="three.pdf")

    await refused(response, 422, "too_many_pages")


@ledger
async def test_a_staff_override_gives_one_user_other_limits(settings, fake_vllm, alice, bob, api, bob_api):
    settings.OCR_USER_DAILY_PAGES = 1
    await amake_job(alice, pages=1)
    await amake_job(bob, pages=1)
    await UserLimits.objects.acreate(user=alice, daily_pages=0, note="customer with a contract")  # 0: no limit

    mine, frames = await api.ocr("image", PNG, name="page.png")
    theirs = await bob_api.post_file("image", PNG, name="page.png")

    assert mine.status_code == 200 and assert_contract(frames, "image")["status"] == "done"
    await refused(theirs, 429, "daily_quota_exceeded")


@ledger
async def test_admission_costs_one_query_in_the_transaction_that_creates_the_job(alice):
    def create() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            _create_job(
                owner=alice,
                kind="image",
                source="api",
                file_name="page.png",
                content_type="image/png",
                data=PNG,
                prompt="Free OCR.",
                engine="openai",
                model="m",
                page_count=1,
                keep_upload=False,
                enforce_limits=True,
            )
        return [query["sql"] for query in queries.captured_queries]

    statements = [sql for sql in await sync_to_async(create)() if not sql.startswith(("BEGIN", "COMMIT", "SAVEPOINT"))]

    lock = ["SELECT … FOR UPDATE"] if connection.features.has_select_for_update else []
    assert len(statements) == len(lock) + 2, statements
    assert statements[-2].startswith("SELECT") and statements[-1].startswith("INSERT")


@ledger
def test_admissions_of_one_user_in_parallel_never_exceed_the_limit_on_postgresql(settings, alice):
    """Ten admissions at once from ten threads (ten connections): exactly the limit gets in."""
    if not connection.features.has_select_for_update:
        pytest.skip("SQLite serialises writers itself; the real-server test covers it")
    settings.OCR_USER_MAX_RUNNING_JOBS = 3
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from django.db import connections

    from accounts.limits import LimitExceeded

    barrier = Barrier(10)

    def admit() -> str:
        barrier.wait(10)
        try:
            _create_job(
                owner=alice, kind="image", source="api", file_name="p.png", content_type="image/png", data=b"x",
                prompt="", engine="openai", model="m", page_count=1, keep_upload=False, enforce_limits=True,
            )  # fmt: skip
            return "admitted"
        except LimitExceeded as error:
            return error.code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(10) as pool:
        outcomes = sorted(pool.map(lambda _: admit(), range(10)))

    assert outcomes == ["admitted"] * 3 + ["too_many_jobs"] * 7


async def test_a_browser_upload_over_the_limit_is_refused_with_429_and_a_message(settings, fake_vllm, alice):
    settings.OCR_USER_MAX_RUNNING_JOBS = 1
    await amake_job(alice, status=JobStatus.RUNNING)
    client = AsyncClient()
    await client.aforce_login(alice)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = await client.post(
        "/jobs/new", {"file": SimpleUploadedFile("page.png", PNG, content_type="image/png"), "preset": "default"}
    )

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert "too many jobs running" in response.content.decode()
    assert await OcrJob.objects.filter(owner=alice).acount() == 1


async def test_staff_edit_a_users_limits_in_the_admin(alice):
    staff = await sync_to_async(make_user)("sam", staff=True)
    staff.is_superuser = True
    await staff.asave()
    client = AsyncClient()
    await client.aforce_login(staff)

    form = await client.get(f"/admin/auth/user/{alice.pk}/change/")
    added = await client.post(
        "/admin/accounts/userlimits/add/", {"user": alice.pk, "max_running_jobs": "3", "daily_pages": "", "note": "x"}
    )
    listing = await client.get("/admin/accounts/userlimits/")

    assert form.status_code == 200 and b"OCR limits" in form.content
    assert added.status_code == 302
    limits = await UserLimits.objects.aget(user=alice)
    assert limits.max_running_jobs == 3 and limits.daily_pages is None
    assert listing.status_code == 200 and b"0 of 3 jobs running" in listing.content


def test_concurrent_uploads_of_one_user_never_exceed_the_limit(fake_vllm_server, app_server):
    """Ten uploads at once against a real server on SQLite: exactly the limit is admitted, the rest get 429."""
    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=20, first_token_delay=1.0)
    server = app_server(
        {"OCR_ENGINE": "openai", "LLM_BASE_URL": fake_vllm_server.base_url, "OCR_USER_MAX_RUNNING_JOBS": "3"},
        name="user-limit",
    )
    try:
        token = server.register_and_login("una")

        async def upload() -> tuple[int, str]:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(
                    f"{server.url}/api/ocr/image",
                    files={"file": ("page.png", PNG, "image/png")},
                    headers={"Authorization": f"Bearer {token}"},
                )
                return response.status_code, response.text

        async def all_at_once() -> list[tuple[int, str]]:
            return await asyncio.gather(*(upload() for _ in range(10)))

        results = asyncio.run(all_at_once())
    finally:
        server.stop()
        fake_vllm_server.reset()

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 3 + [429] * 7, results
    for status, body in results:
        if status == 200:
            assert json.loads(body.splitlines()[-1])["status"] == "done"
        else:
            assert json.loads(body)["error"]["code"] == "too_many_jobs"


# --- with authentication off: per client address ---------------------------------------------------------


async def anonymous_upload(monkeypatch: Any, address: str, data: bytes = PNG, kind: str = "image") -> Any:
    """An upload without a token from ``address`` (Django's test client always says 127.0.0.1)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    monkeypatch.setattr(ratelimit, "client_address", lambda request: address)
    name = "doc.pdf" if kind == "pdf" else "page.png"
    return await AsyncClient().post(f"/api/ocr/{kind}", {"file": SimpleUploadedFile(name, data)})


async def anonymous_user_model() -> Any:
    from accounts.authentication import anonymous_user

    return await anonymous_user()


async def test_with_auth_off_the_running_jobs_limit_counts_each_client_address(
    settings, fake_vllm, transactional_db, monkeypatch
):
    settings.AUTH_ENABLED = False
    settings.OCR_USER_MAX_RUNNING_JOBS = 1
    anonymous = await anonymous_user_model()
    await amake_job(anonymous, status=JobStatus.RUNNING, client_address="10.0.0.1")

    await refused(await anonymous_upload(monkeypatch, "10.0.0.1"), 429, "too_many_jobs")
    response = await anonymous_upload(monkeypatch, "10.0.0.2")
    assert response.status_code == 200
    assert b'"type":"end"' in b"".join([chunk async for chunk in response.streaming_content])
    job = await OcrJob.objects.exclude(client_address="10.0.0.1").aget()
    assert job.client_address == "10.0.0.2" and job.owner_id == anonymous.pk


async def test_with_auth_off_the_daily_pages_count_each_client_address(
    settings, fake_vllm, transactional_db, monkeypatch
):
    settings.AUTH_ENABLED = False
    settings.OCR_USER_DAILY_PAGES = 3
    anonymous = await anonymous_user_model()
    await amake_job(anonymous, pages=3, client_address="10.0.0.1")

    await refused(await anonymous_upload(monkeypatch, "10.0.0.1"), 429, "daily_quota_exceeded")
    response = await anonymous_upload(monkeypatch, "10.0.0.2", make_numbered_pdf(3), kind="pdf")
    assert response.status_code == 200
    assert b'"type":"end"' in b"".join([chunk async for chunk in response.streaming_content])


async def test_signed_in_users_jobs_record_no_client_address(settings, fake_vllm, alice, api):
    settings.AUTH_ENABLED = False  # a token still names its user
    response, _ = await api.ocr("image", PNG, name="page.png")
    assert response.status_code == 200
    assert (await OcrJob.objects.aget(owner=alice)).client_address == ""


def test_with_auth_off_fifteen_simultaneous_uploads_from_fifteen_clients_all_stream(fake_vllm_server, app_server):
    """The original's default (AUTH_ENABLED=false) against a real server with the default limits: fifteen clients
    on fifteen loopback addresses upload at once, and every one is streaming while all the others are too."""
    import threading

    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=10, token_delay=0.02)
    server = app_server(
        {"OCR_ENGINE": "openai", "LLM_BASE_URL": fake_vllm_server.base_url, "AUTH_ENABLED": "false"}, name="auth-off"
    )
    clients = 15
    all_streaming = threading.Barrier(clients, timeout=60)

    def upload(index: int) -> list[dict[str, Any]]:
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{index + 2}")
        with (
            httpx.Client(transport=transport, timeout=60) as client,
            client.stream("POST", f"{server.url}/api/ocr/image", files={"file": ("page.png", PNG, "image/png")}) as r,
        ):
            if r.status_code != 200:
                all_streaming.abort()  # the others need not wait for one that will never stream
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            frames = [json.loads(next(lines))]
            all_streaming.wait()  # every upload has its start frame before any reads on
            frames += [json.loads(line) for line in lines if line]
            return frames

    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(upload, range(clients)))
    finally:
        server.stop()
        fake_vllm_server.reset()

    assert len(results) == clients
    for frames in results:
        assert frames[0]["type"] == "start"
        assert assert_contract(frames, "image")["status"] == "done"


# --- signing in and registering ---------------------------------------------------------------------------


async def token_request(username: str, password: str) -> Any:
    return await AsyncClient().post("/api/auth/token", {"username": username, "password": password})


async def test_the_token_endpoint_refuses_a_user_name_after_too_many_failures(settings, alice):
    settings.OCR_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        await refused(await token_request("alice", "wrong"), 401, "invalid_credentials")

    blocked = await token_request("alice", PASSWORD)  # even the right password is not checked now
    other = await token_request("bob", "wrong")

    body = await refused(blocked, 429, "too_many_attempts")
    assert "Try again" in body["error"]["message"]
    assert 1 <= int(blocked["Retry-After"]) <= settings.OCR_LOGIN_WINDOW_SECONDS
    await refused(other, 401, "invalid_credentials")


async def test_failures_from_another_address_do_not_lock_the_user_out(settings, alice, monkeypatch):
    settings.OCR_LOGIN_MAX_FAILURES = 2
    monkeypatch.setattr(ratelimit, "client_address", lambda request: "203.0.113.9")
    for _ in range(2):
        await token_request("alice", "wrong")
    assert (await token_request("alice", PASSWORD)).status_code == 429

    monkeypatch.setattr(ratelimit, "client_address", lambda request: "198.51.100.7")
    from_elsewhere = await token_request("alice", PASSWORD)

    assert from_elsewhere.status_code == 200


async def test_a_successful_sign_in_clears_the_failures(settings, alice):
    settings.OCR_LOGIN_MAX_FAILURES = 3
    for _ in range(2):
        await token_request("alice", "wrong")
    assert (await token_request("alice", PASSWORD)).status_code == 200
    for _ in range(2):
        await token_request("alice", "wrong")

    response = await token_request("alice", PASSWORD)

    assert response.status_code == 200


async def test_the_address_limit_stops_password_spraying_over_many_user_names(settings, transactional_db):
    settings.OCR_LOGIN_MAX_FAILURES_PER_IP = 5
    for index in range(5):
        await refused(await token_request(f"user{index}", "Summer2026!"), 401, "invalid_credentials")

    await refused(await token_request("user99", "Summer2026!"), 429, "too_many_attempts")


async def test_sign_in_works_again_when_the_window_has_passed(settings, alice, monkeypatch):
    settings.OCR_LOGIN_MAX_FAILURES = 2
    now = [1_000_000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: now[0])
    for _ in range(2):
        await token_request("alice", "wrong")
    assert (await token_request("alice", PASSWORD)).status_code == 429

    now[0] += settings.OCR_LOGIN_WINDOW_SECONDS

    assert (await token_request("alice", PASSWORD)).status_code == 200


async def test_the_login_form_is_rate_limited_with_a_message(settings, alice):
    settings.OCR_LOGIN_MAX_FAILURES = 2
    client = AsyncClient()
    for _ in range(2):
        response = await client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200

    response = await client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert "Too many attempts" in response.content.decode()
    assert "_auth_user_id" not in await client.asession()


async def test_the_admin_login_form_is_rate_limited(settings, alice):
    settings.OCR_LOGIN_MAX_FAILURES = 2
    client = AsyncClient()
    for _ in range(2):
        assert (await client.post("/admin/login/", {"username": "alice", "password": "wrong"})).status_code == 200

    response = await client.post("/admin/login/", {"username": "alice", "password": PASSWORD})

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert response["Content-Type"].startswith("text/html"), "a styled page, like the other errors"
    assert "Too many attempts" in response.content.decode()


async def test_registration_is_rate_limited_per_address(settings, transactional_db):
    settings.OCR_REGISTER_MAX_PER_IP = 2
    client = AsyncClient()
    statuses = []
    for index in range(3):
        response = await client.post(
            "/api/auth/register", {"username": f"new{index}", "password": PASSWORD}, content_type="application/json"
        )
        statuses.append(response.status_code)
    form = await client.post("/accounts/register/", {"username": "new9", "password1": PASSWORD, "password2": PASSWORD})

    assert statuses == [201, 201, 429]
    assert form.status_code == 429 and "Too many attempts" in form.content.decode()


@pytest.fixture
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/13"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
    except redis.exceptions.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield url
    client.flushdb()


def test_with_redis_the_sign_in_limit_holds_across_processes(fake_vllm_server, app_server, redis_url):
    env = {"REDIS_URL": redis_url, "OCR_LOGIN_MAX_FAILURES": "4"}
    first = app_server(env, name="redis-limit")
    second = app_server(env, data_dir=first.data_dir, log_name="server-2.log")
    first.register_and_login("vera")
    statuses = [
        httpx.post(f"{server.url}/api/auth/token", data={"username": "vera", "password": "wrong"}).status_code
        for server in (first, second, first, second, first)
    ]
    right = httpx.post(f"{second.url}/api/auth/token", data={"username": "vera", "password": PASSWORD})

    assert statuses == [401, 401, 401, 401, 429]
    assert right.status_code == 429
