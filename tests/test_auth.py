"""Accounts over the API: registration, tokens (hashed, expiring, revocable), identity, usage, isolation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import ApiToken
from accounts.tokens import token_create
from ocr.models import OcrJob
from testing.documents import SAMPLES

from .conftest import PASSWORD, Api
from .contract import assert_contract

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


async def test_register_then_log_in_then_call_the_api_with_the_token():
    client = AsyncClient()
    response = await client.post(
        "/api/auth/register", {"username": "dora", "password": PASSWORD}, content_type="application/json"
    )
    assert response.status_code == 201
    assert response.json()["username"] == "dora"

    response = await client.post("/api/auth/token", {"username": "dora", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 24 * 60 * 60

    me = await client.get("/api/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == "dora"


async def test_a_wrong_password_gets_no_token(alice):
    response = await AsyncClient().post("/api/auth/token", {"username": "alice", "password": "nope"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"username": "alice", "password": PASSWORD}, "invalid_registration"),  # taken
        ({"username": "erin", "password": "123"}, "invalid_registration"),  # weak
        ({"username": "bad name!", "password": PASSWORD}, "invalid_registration"),
        ({"username": "erin"}, "invalid_request"),
    ],
)
async def test_invalid_registrations_are_refused(alice, payload, code):
    response = await AsyncClient().post("/api/auth/register", payload, content_type="application/json")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_registration_can_be_closed(settings, transactional_db):
    settings.REGISTRATION_OPEN = False

    response = await AsyncClient().post(
        "/api/auth/register", {"username": "frank", "password": PASSWORD}, content_type="application/json"
    )

    assert response.status_code == 403


async def test_tokens_are_stored_only_as_digests(alice):
    issued = await token_create_async(alice)

    token = await ApiToken.objects.aget(pk=issued.token.pk)
    assert issued.secret.startswith("mocr_")
    assert token.digest != issued.secret and len(token.digest) == 64
    assert issued.secret not in (token.digest, token.prefix, token.name)
    assert issued.secret.startswith(token.prefix)


async def token_create_async(user, **kwargs):
    from asgiref.sync import sync_to_async

    return await sync_to_async(token_create)(user=user, name="t", **kwargs)


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer mocr_not-a-real-token", "Basic YWxpY2U6cHc="])
async def test_requests_without_a_valid_token_are_refused(alice, header):
    headers = {"Authorization": header} if header else {}

    response = await AsyncClient().get("/api/users/me", headers=headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"


async def test_an_expired_token_is_refused(alice):
    issued = await token_create_async(alice, expires_at=timezone.now() - timedelta(seconds=1))

    response = await AsyncClient().get("/api/users/me", headers={"Authorization": f"Bearer {issued.secret}"})

    assert response.status_code == 401


async def test_a_revoked_token_is_refused(alice):
    issued = await token_create_async(alice)
    await ApiToken.objects.filter(pk=issued.token.pk).aupdate(revoked_at=timezone.now())

    response = await AsyncClient().get("/api/users/me", headers={"Authorization": f"Bearer {issued.secret}"})

    assert response.status_code == 401


async def test_a_deactivated_user_cannot_use_their_token(alice, alice_token):
    await get_user_model().objects.filter(pk=alice.pk).aupdate(is_active=False)

    response = await Api(alice_token).get("/api/users/me")

    assert response.status_code == 401


async def test_the_api_refuses_session_cookies(alice, alice_token):
    client = AsyncClient()
    await client.aforce_login(alice)

    response = await client.get("/api/users/me")

    assert response.status_code == 401, "API endpoints authenticate by bearer token only"


async def test_using_a_token_records_when_it_was_last_used(alice, alice_token):
    await Api(alice_token).get("/api/users/me")

    token = await ApiToken.objects.aget(user=alice)
    assert token.last_used_at is not None


@pytest.mark.usefixtures("fake_vllm")
async def test_a_user_never_sees_another_users_jobs(api, bob_api):
    _, frames = await api.ocr("image", SAMPLES["short"].render())
    job_id = assert_contract(frames, "image")["job_id"]

    assert (await api.get(f"/api/jobs/{job_id}")).status_code == 200
    response = await bob_api.get(f"/api/jobs/{job_id}")
    assert response.status_code == 404, "another user's job is not found, not forbidden"
    assert (await bob_api.get("/api/users/me/usage")).json() == []
    assert (await bob_api.get("/api/users/me/usage/summary")).json()["events"] == 0
    assert (await api.get("/api/jobs/not-a-uuid")).status_code == 404


@pytest.mark.usefixtures("fake_vllm")
async def test_usage_endpoints_report_the_users_jobs(api, fake_vllm):
    fake_vllm.push_script({}, {"fail_status": 500})
    _, ok = await api.ocr("image", SAMPLES["short"].render())
    _, failed = await api.ocr("image", SAMPLES["short"].render())

    events = (await api.get("/api/users/me/usage")).json()
    assert [event["status"] for event in events] == ["failed", "done"], "newest first"
    summary = (await api.get("/api/users/me/usage/summary")).json()
    assert summary["events"] == 2 and summary["failed"] == 1
    ok_usage = assert_contract(ok, "image")["usage"]
    failed_usage = assert_contract(failed, "image")["usage"]
    assert summary["prompt_tokens"] == ok_usage["prompt_tokens"] + failed_usage["prompt_tokens"]
    assert summary["input_bytes"] == ok_usage["input_bytes"] + failed_usage["input_bytes"]
    assert summary["total_tokens"] == summary["prompt_tokens"] + summary["completion_tokens"]


@pytest.mark.usefixtures("fake_vllm")
async def test_with_auth_disabled_requests_belong_to_the_anonymous_user(settings, transactional_db):
    settings.AUTH_ENABLED = False

    _, frames = await Api(None).ocr("image", SAMPLES["short"].render())

    job = await OcrJob.objects.select_related("owner").aget(pk=assert_contract(frames, "image")["job_id"])
    assert job.owner.username == "anonymous"
    assert not job.owner.has_usable_password()
    me = await Api(None).get("/api/users/me")
    assert me.json()["username"] == "anonymous" and me.json()["auth_enabled"] is False


async def test_wrong_methods_get_405(api):
    response = await api.get("/api/ocr/image")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
