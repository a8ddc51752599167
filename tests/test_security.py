"""Security review as tests: who may reach what (every endpoint of the URL conf, six kinds of caller), CSRF on every
browser form, production settings (deploy checks, secure cookies, HSTS and the other headers), hostile file names
and prompts, and secrets that must never reach a log."""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.test import AsyncClient
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from accounts.models import ApiToken, UserLimits
from accounts.tokens import token_create
from ocr.models import JobStatus, OcrJob, PendingUpload, WebhookAttempt, WebhookDelivery
from ocr.services import PageOutcome, _close_job, _create_job, _record_page
from testing.documents import SAMPLES, make_numbered_pdf
from testing.production import SECRET_KEY
from testing.servers import ROOT

from .conftest import PASSWORD, Api, make_user

PNG = SAMPLES["short"].render()
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"

# --- the world every caller meets -------------------------------------------------------------------------


@dataclass
class World:
    alice: Any
    bob: Any
    staff: Any
    job: OcrJob  # alice's finished two-page PDF job, its upload kept
    doomed_job: OcrJob  # alice's, for the delete endpoint
    tokens: dict[str, str] = field(default_factory=dict)  # principal -> bearer secret
    token_to_revoke: int = 0


def finished_job(owner: Any, pages: int = 2) -> OcrJob:
    data = make_numbered_pdf(pages)
    job = _create_job(
        owner=owner, kind="pdf", source="api", file_name="book.pdf", content_type="application/pdf", data=data,
        prompt="Free OCR.", engine="openai", model="m", page_count=pages, keep_upload=True,
    )  # fmt: skip
    for number in range(1, pages + 1):
        outcome = PageOutcome(number=number, status="done", text=f"text of page {number}", prompt_tokens=10)
        outcome.started_at = outcome.finished_at = timezone.now()
        _record_page(job_id=job.pk, outcome=outcome)
    _close_job(job_id=job.pk, status=JobStatus.DONE, first_delta_ms=1, duration_ms=2)
    job.refresh_from_db()
    return job


def build_world() -> World:
    alice, bob = make_user("alice"), make_user("bob")
    staff = make_user("sam", staff=True)
    staff.is_superuser = True
    staff.save()
    world = World(alice=alice, bob=bob, staff=staff, job=finished_job(alice), doomed_job=finished_job(alice, 1))
    world.tokens = {
        "owner": token_create(user=alice, name="owner").secret,
        "token_only": token_create(user=alice, name="token only").secret,
        "other": token_create(user=bob, name="other").secret,
        "staff": token_create(user=staff, name="staff").secret,
        "revoked": token_create(user=alice, name="revoked").secret,
        "expired": token_create(user=alice, name="expired", expires_at=timezone.now() - timedelta(minutes=1)).secret,
    }
    ApiToken.objects.filter(name="revoked").update(revoked_at=timezone.now())
    world.token_to_revoke = token_create(user=alice, name="to revoke").token.pk
    UserLimits.objects.create(user=alice, daily_pages=100)
    Group.objects.create(name="operators")
    delivery = WebhookDelivery.objects.create(
        job=world.job, job_finished_at=timezone.now(), url="https://example.com/hook", next_attempt_at=timezone.now()
    )
    WebhookAttempt.objects.create(delivery=delivery, status_code=500, error="HTTP 500")
    kept = PendingUpload(owner=alice, file_name="kept.png", kind="image", size=4)
    kept.data.save("kept", ContentFile(b"\x89PNG"), save=False)
    kept.save()
    return world


@pytest.fixture
def world(transactional_db, settings, tmp_path) -> World:
    settings.MEDIA_ROOT = tmp_path / "media"
    # Three accounts per test: hashing their passwords the production way would be most of this module's time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return build_world()


# --- callers ----------------------------------------------------------------------------------------------

#: Tried in this order, the owner last: some endpoints (delete, revoke) change what the next caller finds.
PRINCIPALS = ("anonymous", "revoked", "expired", "token_only", "other", "staff", "owner")
SESSION_USER = {"owner": "alice", "other": "bob", "staff": "staff"}
SIGNED_OUT = {"anonymous", "revoked", "expired", "token_only"}  # for the browser pages: no session


async def client_for(world: World, principal: str, *, api: bool) -> tuple[AsyncClient, dict[str, str]]:
    """The API authenticates by bearer token only; the pages by session only (a token there is ignored)."""
    client = AsyncClient()
    headers: dict[str, str] = {}
    if principal in world.tokens and (api or principal in ("revoked", "expired", "token_only")):
        headers["Authorization"] = f"Bearer {world.tokens[principal]}"
    if not api and principal in SESSION_USER:
        await client.aforce_login(getattr(world, SESSION_USER[principal]))
    return client, headers


async def call(client: AsyncClient, method: str, url: str, headers: dict[str, str], data: Any = None) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method == "POST":
        response = await client.post(url, data or {}, **kwargs)
    else:
        response = await client.generic(method, url, **kwargs)
    if getattr(response, "streaming", False):
        response.body = b"".join([chunk async for chunk in response.streaming_content])
    return response


def redirects_to(response: Any, prefix: str) -> bool:
    return response.status_code == 302 and response["Location"].startswith(prefix)


# --- what each kind of endpoint must answer ---------------------------------------------------------------

Expectation = Callable[[str, Any], bool]


def api_user(principal: str, response: Any) -> bool:
    return response.status_code == (401 if principal in ("anonymous", "revoked", "expired") else 200)


def api_owned(principal: str, response: Any) -> bool:
    expected = {"anonymous": 401, "revoked": 401, "expired": 401, "other": 404, "staff": 404}
    return response.status_code == expected.get(principal, 200)


def api_owned_ended(principal: str, response: Any) -> bool:
    # The job has ended: its owner is told it cannot be cancelled or retried (409); nobody else learns it exists.
    expected = {"anonymous": 401, "revoked": 401, "expired": 401, "other": 404, "staff": 404}
    return response.status_code == expected.get(principal, 409)


def api_upload(principal: str, response: Any) -> bool:
    # The upload is not an image: a caller that got past authentication is told so (415).
    return response.status_code == (401 if principal in ("anonymous", "revoked", "expired") else 415)


def page_user(principal: str, response: Any) -> bool:
    if principal in SIGNED_OUT:
        return redirects_to(response, LOGIN)
    return response.status_code < 500 and not redirects_to(response, LOGIN) and response.status_code != 403


def page_owned(principal: str, response: Any) -> bool:
    if principal in SIGNED_OUT:
        return redirects_to(response, LOGIN)
    if principal in ("other", "staff"):
        return response.status_code == 404  # another user's job or token does not exist for them
    return response.status_code in (200, 302)


def public(principal: str, response: Any) -> bool:
    return response.status_code < 500 and response.status_code not in (401, 403) and not redirects_to(response, LOGIN)


def signs_out(principal: str, response: Any) -> bool:
    return redirects_to(response, LOGIN)  # whoever asks: there is nothing to protect in signing out


@dataclass(frozen=True)
class Endpoint:
    method: str
    expect: Expectation
    kwargs: Callable[[World], dict[str, Any]] = lambda world: {}
    data: Callable[[World], Any] = lambda world: None


def job_id(world: World) -> dict[str, Any]:
    return {"job_id": world.job.pk}


def upload(world: World) -> dict[str, Any]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return {"file": SimpleUploadedFile("notes.txt", b"not an image", content_type="text/plain")}


#: Every named endpoint outside the admin. A new URL fails ``test_every_endpoint_is_in_the_matrix`` until it is here.
ENDPOINTS: dict[str, Endpoint] = {
    "metrics": Endpoint("GET", public),
    "api-metrics": Endpoint("GET", public),
    "api:ocr-image": Endpoint("POST", api_upload, data=upload),
    "api:ocr-pdf": Endpoint("POST", api_upload, data=upload),
    "api:job-detail": Endpoint("GET", api_owned, job_id),
    "api:jobs": Endpoint("POST", api_upload, data=upload),
    "api:job-events": Endpoint("GET", api_owned, job_id),
    "api:my-webhook": Endpoint("GET", api_user),
    "api:my-webhook-rotate": Endpoint("POST", api_user),
    "api:job-cancel": Endpoint("POST", api_owned_ended, job_id),
    "api:job-retry": Endpoint("POST", api_owned_ended, job_id),
    "api:job-result-md": Endpoint("GET", api_owned, job_id),
    "api:job-result-txt": Endpoint("GET", api_owned, job_id),
    "api:job-result-json": Endpoint("GET", api_owned, job_id),
    "api:job-result-pdf": Endpoint("GET", api_owned, job_id),
    "api:job-result-docx": Endpoint("GET", api_owned, job_id),
    "api:register": Endpoint("POST", public, data=lambda world: {"username": "", "password": ""}),
    "api:token": Endpoint("POST", public, data=lambda world: {"username": "alice", "password": PASSWORD}),
    "api:me": Endpoint("GET", api_user),
    "api:my-usage": Endpoint("GET", api_user),
    "api:my-usage-summary": Endpoint("GET", api_user),
    "api:openapi": Endpoint("GET", public),
    "api:docs": Endpoint("GET", public),
    "admin-login": Endpoint("GET", public),  # the admin's login form (behind our rate limit) ...
    "admin:login": Endpoint("GET", public),  # ... under the admin's own name for the same route
    "healthz": Endpoint("GET", public),
    "favicon": Endpoint("GET", public),
    "accounts:login": Endpoint("GET", public),
    "accounts:logout": Endpoint("POST", signs_out),
    "accounts:register": Endpoint("GET", public),
    "accounts:password-change": Endpoint("GET", page_user),
    "accounts:password-change-done": Endpoint("GET", page_user),
    "accounts:tokens": Endpoint("GET", page_user),
    "accounts:token-revoke": Endpoint("POST", page_owned, lambda world: {"token_id": world.token_to_revoke}),
    "accounts:webhook-rotate": Endpoint("POST", page_user),
    "set_language": Endpoint("POST", public, data=lambda world: {"language": "en", "next": "/"}),
    "ocr:home": Endpoint("GET", page_user),
    "ocr:job-new": Endpoint("POST", page_user),
    "ocr:preview": Endpoint("POST", page_user),
    "ocr:history": Endpoint("GET", page_user),
    "ocr:job-batch": Endpoint("GET", page_user),
    "ocr:job": Endpoint("GET", page_owned, job_id),
    "ocr:job-events": Endpoint("GET", page_owned, job_id),
    "ocr:job-cancel": Endpoint("POST", page_owned, job_id),
    "ocr:job-retry": Endpoint("POST", page_owned, job_id),
    "ocr:job-again": Endpoint("POST", page_owned, job_id),
    "ocr:job-delete": Endpoint("POST", page_owned, lambda world: {"job_id": world.doomed_job.pk}),
    "ocr:job-download": Endpoint("GET", page_owned, lambda world: {"job_id": world.job.pk, "fmt": "md"}),
    "ocr:page-image": Endpoint("GET", page_owned, lambda world: {"job_id": world.job.pk, "number": 1}),
    "ocr:page-download": Endpoint("GET", page_owned, lambda world: {"job_id": world.job.pk, "number": 1}),
    "ocr:usage": Endpoint("GET", page_user),
}


def url_patterns() -> list[tuple[str, str, URLPattern]]:
    """(name, route, pattern) of every URL; the admin's unnamed routes are named by their route."""
    found = []

    def walk(patterns: list[Any], prefix: str, namespace: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, route, inner)
            else:
                name = f"{namespace}{pattern.name}" if pattern.name else route
                found.append((name, route, pattern))

    walk(get_resolver().url_patterns, "", "")
    return found


def is_admin(route: str) -> bool:
    return route.startswith("admin/") and route != "admin/login/"


def fill(route: str, values: dict[str, Any]) -> str:
    route = re.sub(r"\^?\(\?P<(\w+)>[^)]*\)\$?", lambda m: f"<{m.group(1)}>", route)
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)


# --- the matrix -------------------------------------------------------------------------------------------


def test_every_endpoint_is_in_the_matrix():
    names = {name for name, route, _ in url_patterns() if not is_admin(route)}

    assert names - set(ENDPOINTS) == set(), "classify the new endpoints in ENDPOINTS"
    assert set(ENDPOINTS) - names == set(), "ENDPOINTS names URLs that no longer exist"


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
async def test_authorization_matrix(name, world):
    endpoint = ENDPOINTS[name]
    route = next(route for url_name, route, _ in url_patterns() if url_name == name)
    url = fill(route, endpoint.kwargs(world))
    failures = []
    for principal in PRINCIPALS:
        client, headers = await client_for(world, principal, api=name.startswith("api:"))
        response = await call(client, endpoint.method, url, headers, endpoint.data(world))
        if not endpoint.expect(principal, response):
            failures.append(f"{principal}: {response.status_code} {response.get('Location', '')}")
    assert failures == [], f"{endpoint.method} {url}"


async def test_the_api_never_accepts_the_session_cookie(world):
    client = AsyncClient()
    await client.aforce_login(world.alice)
    for name, endpoint in ENDPOINTS.items():
        if endpoint.expect in (api_user, api_owned, api_owned_ended, api_upload):
            route = next(route for url_name, route, _ in url_patterns() if url_name == name)
            response = await call(
                client, endpoint.method, fill(route, endpoint.kwargs(world)), {}, endpoint.data(world)
            )
            assert response.status_code == 401, name


async def test_each_user_sees_only_their_own_account_and_usage(world):
    for principal, username in (("owner", "alice"), ("other", "bob"), ("staff", "sam")):
        api = Api(world.tokens[principal])
        me = (await api.get("/api/users/me")).json()
        usage = (await api.get("/api/users/me/usage")).json()
        assert me["username"] == username
        expected_jobs = 2 if username == "alice" else 0
        assert len(usage) == expected_jobs, principal


def admin_values(world: World, route: str) -> dict[str, Any]:
    values: dict[str, Any] = {"app_label": "ocr", "url": "no-such-page/", "id": world.alice.pk}
    model = re.match(r"admin/(\w+)/(\w+)/", route)
    if model and model.group(1) in {config.label for config in apps.get_app_configs()}:
        values["object_id"] = apps.get_model(model.group(1), model.group(2)).objects.order_by("pk").first().pk
    if "content_type_id" in route:
        values.update(content_type_id=ContentType.objects.get_for_model(OcrJob).pk, object_id=world.job.pk)
    return values


async def test_the_admin_is_for_staff_only_on_every_admin_url(world):
    routes = [route for _, route, _ in url_patterns() if is_admin(route)]
    registered = {f"admin/{m._meta.app_label}/{m._meta.model_name}/" for m in admin.site._registry}
    assert registered <= {re.match(r"admin/\w+/\w+/", r).group(0) for r in routes if re.match(r"admin/\w+/\w+/", r)}
    failures = []
    for route in routes:
        url = fill(route, await sync_to_async(admin_values)(world, route))
        for principal in PRINCIPALS:
            client, headers = await client_for(world, principal, api=False)
            response = await call(client, "GET", url, headers)
            if principal == "staff":
                ok = response.status_code < 500 and not redirects_to(response, ADMIN_LOGIN)
            else:
                # The login form, or (for the admin's logout and unknown pages) another admin page that asks for it.
                ok = response.status_code != 200 and (
                    response.status_code in (404, 405) or redirects_to(response, "/admin/")
                )
            if not ok:
                failures.append(f"{principal} GET {url}: {response.status_code} {response.get('Location', '')}")
    assert failures == []


async def test_staff_see_the_admin_lists_and_forms(world):
    client, _ = await client_for(world, "staff", api=False)
    for model in admin.site._registry:
        opts = model._meta
        first = await sync_to_async(lambda m=model: m.objects.order_by("pk").first())()
        for url in (
            f"/admin/{opts.app_label}/{opts.model_name}/",
            f"/admin/{opts.app_label}/{opts.model_name}/{first.pk}/change/",
        ):
            response = await client.get(url)
            assert response.status_code == 200, url


# --- CSRF -------------------------------------------------------------------------------------------------

BROWSER_POSTS = [
    name for name, endpoint in ENDPOINTS.items() if endpoint.method == "POST" and not name.startswith("api:")
]


@pytest.mark.parametrize(
    "name",
    [
        *BROWSER_POSTS,
        "accounts:login",
        "accounts:register",
        "accounts:tokens",
        "accounts:password-change",
        "admin-login",
    ],
)
async def test_every_browser_form_refuses_a_post_without_the_csrf_token(name, world):
    endpoint = ENDPOINTS[name]
    route = next(route for url_name, route, _ in url_patterns() if url_name == name)
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(world.alice)

    response = await client.post(fill(route, endpoint.kwargs(world)), endpoint.data(world) or {"x": "1"})

    assert response.status_code == 403, name


async def test_the_admin_forms_refuse_a_post_without_the_csrf_token(world):
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(world.staff)
    for url in ("/admin/accounts/userlimits/add/", f"/admin/auth/user/{world.bob.pk}/change/", "/admin/logout/"):
        assert (await client.post(url, {"max_running_jobs": "1"})).status_code == 403, url


FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.S | re.I)


async def test_every_post_form_on_every_page_carries_the_csrf_token(world):
    client = AsyncClient()
    await client.aforce_login(world.alice)
    staff = AsyncClient()
    await staff.aforce_login(world.staff)
    pages = [(client, fill(route, ENDPOINTS[name].kwargs(world))) for name, route, _ in url_patterns()
             if name in ENDPOINTS and ENDPOINTS[name].method == "GET" and not name.startswith(("api", "metrics"))
             and ENDPOINTS[name].expect in (page_user, page_owned)]  # fmt: skip
    pages += [(AsyncClient(), LOGIN), (AsyncClient(), "/accounts/register/"), (AsyncClient(), ADMIN_LOGIN)]
    pages += [
        (staff, "/admin/"),
        (staff, "/admin/accounts/userlimits/add/"),
        (staff, f"/admin/auth/user/{world.bob.pk}/change/"),
    ]
    checked = 0
    for page_client, url in pages:
        response = await call(page_client, "GET", url, {})
        if "text/html" not in response.get("Content-Type", ""):
            continue
        html = response.content.decode()
        for form in FORM.findall(html):
            if re.search(r'method="post"', form, re.I):
                assert 'name="csrfmiddlewaretoken"' in form, f"{url}: {form[:200]}"
                checked += 1
        if "hx-post" in html:
            assert re.search(r'<body[^>]*hx-headers=\'\{"x-csrftoken": "[^"]+"\}\'', html), url
    assert checked >= 10


# --- production settings ----------------------------------------------------------------------------------


def deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "ocr.example.com",
        "OCR_DATA_DIR": "/tmp/myocr-deploy-check",
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
    )


def test_check_deploy_reports_nothing_with_production_settings():
    result = deploy_check()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_still_sees_what_production_settings_must_not_lose():
    """The checks Django would skip for our subclassed middleware run under myocr.* ids."""
    result = deploy_check(SECURE_HSTS_SECONDS="0", CSRF_COOKIE_SECURE="false", CONTENT_SECURITY_POLICY="")

    assert result.returncode != 0
    for check in ("myocr.security.W004", "myocr.security.W016", "myocr.W101"):
        assert check in result.stderr + result.stdout, check


@pytest.fixture(scope="module")
def https_server(fake_vllm_server, module_app_server):
    """Production settings behind a TLS proxy, logging everything (DEBUG level) for the secrets test."""
    return module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            "LLM_API_KEY": "engine-api-key-d41d8cd98f00",
            "METRICS_TOKEN": "metrics-token-0cc175b9c0f1",
            "LOG_LEVEL": "DEBUG",
        },
        name="https-server",
        production=True,
        https_proxy=True,
    )


HTTPS = {"X-Forwarded-Proto": "https"}


def test_production_responses_carry_the_security_headers(https_server):
    response = httpx.get(f"{https_server.url}/accounts/login/", headers=HTTPS)

    assert response.status_code == 200
    headers = response.headers
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "camera=()" in headers["Permissions-Policy"]


def test_production_redirects_plain_http_to_https_but_not_the_probes(https_server):
    assert httpx.get(f"{https_server.url}/accounts/login/").status_code == 301
    assert httpx.get(f"{https_server.url}/healthz").status_code == 200


def test_production_cookies_are_secure_httponly_and_same_site(https_server):
    with httpx.Client(base_url=https_server.url, headers=HTTPS) as client:
        page = client.get("/accounts/login/")
        csrf_cookie = page.headers["set-cookie"]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        https_server_user(https_server)
        # httpx keeps Secure cookies for https:// URLs only; the proxy in front would have passed it on.
        cookie = csrf_cookie.split(";", 1)[0]
        login = client.post(
            "/accounts/login/",
            data={"username": "hana", "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={
                "Cookie": cookie,
                "Referer": f"https://127.0.0.1:{https_server.port}/accounts/login/",
                "Origin": f"https://127.0.0.1:{https_server.port}",
            },
        )
    assert login.status_code == 302, (login.status_code, login.text[:300])
    session_cookie = next(
        value for name, value in login.headers.multi_items() if name == "set-cookie" and value.startswith("sessionid=")
    )

    assert login.status_code == 302, login.text[:500]
    assert "; Secure" in csrf_cookie and "SameSite=Lax" in csrf_cookie
    assert "; Secure" in session_cookie and "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie


def https_server_user(server: Any) -> None:
    if getattr(server, "_hana", False):
        return
    response = httpx.post(
        f"{server.url}/api/auth/register", json={"username": "hana", "password": PASSWORD}, headers=HTTPS
    )
    assert response.status_code == 201, response.text
    server._hana = True


def test_secrets_and_tokens_never_reach_the_server_log(https_server):
    https_server_user(https_server)
    url = https_server.url
    token = httpx.post(f"{url}/api/auth/token", data={"username": "hana", "password": PASSWORD}, headers=HTTPS).json()[
        "access_token"
    ]
    bearer = {**HTTPS, "Authorization": f"Bearer {token}"}
    wrong_password = "wrong-password-9f8e7d6c"
    calls = [
        httpx.get(f"{url}/api/users/me", headers=bearer),
        httpx.get(f"{url}/api/jobs/00000000-0000-0000-0000-000000000000", headers=bearer),
        httpx.patch(f"{url}/api/users/me", headers=bearer),
        httpx.post(f"{url}/api/ocr/image", files={"file": ("x.txt", b"not an image")}, headers=bearer),
        httpx.post(f"{url}/api/ocr/image", files={"file": ("page.png", PNG)}, headers=bearer),
        httpx.post(f"{url}/api/auth/token", data={"username": "hana", "password": wrong_password}, headers=HTTPS),
        httpx.get(f"{url}/api/metrics", headers={**HTTPS, "Authorization": "Bearer metrics-token-0cc175b9c0f1"}),
        httpx.get(f"{url}/api/metrics", headers={**HTTPS, "Authorization": f"Bearer {token}"}),
    ]
    httpx.post(
        f"{url}/api/auth/register", json={"username": "ivo", "password": "ivo-secret-password-1a2b"}, headers=HTTPS
    )

    assert [response.status_code for response in calls] == [200, 404, 405, 415, 200, 401, 200, 401]
    log = https_server.log()
    assert "DEBUG" in log, "the server logged at DEBUG level"
    for secret in (token, token[12:], PASSWORD, wrong_password, "ivo-secret-password-1a2b", SECRET_KEY,
                   "engine-api-key-d41d8cd98f00", "metrics-token-0cc175b9c0f1"):  # fmt: skip
        assert secret not in log, f"{secret[:8]}… is in the server log"


async def test_secrets_never_reach_in_process_logs_even_at_debug_level(world, caplog, fake_vllm):
    caplog.set_level(logging.DEBUG)
    token = world.tokens["owner"]
    api = Api(token)
    await api.get("/api/users/me")
    await api.get("/api/jobs/not-a-job")
    await api.post_file("image", b"not an image", name="x.png")
    await Api(world.tokens["revoked"]).get("/api/users/me")
    await AsyncClient().post("/api/auth/token", {"username": "alice", "password": "a-wrong-password-77"})
    await AsyncClient().post("/accounts/login/", {"username": "alice", "password": PASSWORD})

    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    for secret in (token, world.tokens["revoked"], PASSWORD, "a-wrong-password-77"):
        assert secret not in text


# --- hostile names and prompts ----------------------------------------------------------------------------

HOSTILE_NAME = '..\\..\\evil<img src=x onerror=alert("name")>;rm -rf ~;$(reboot)`id`\r\nX-Injected: 1.png'
HOSTILE_PROMPT = '<img src=x onerror=alert("prompt")> {{ settings.SECRET_KEY }} ; rm -rf / $(id)'


async def test_a_hostile_file_name_and_prompt_reach_no_path_header_or_page_unescaped(world, fake_vllm, settings):
    api = Api(world.tokens["owner"])
    response, frames = await api.ocr("image", PNG, name=HOSTILE_NAME, prompt=HOSTILE_PROMPT)
    assert response.status_code == 200
    job = await OcrJob.objects.aget(pk=frames[0]["job_id"])

    assert "/" not in job.file_name and "\\" not in job.file_name and "\n" not in job.file_name
    assert frames[0]["file_name"] == job.file_name
    assert re.fullmatch(rf"uploads/\d{{4}}/\d{{2}}/{job.pk}\.png", job.upload.name)
    stored = stored_files(Path(settings.MEDIA_ROOT))
    # Jobs' uploads and the form's checked files alike are named by ids only.
    names = r"uploads/\d{4}/\d{2}/[0-9a-f-]{36}\.(png|pdf)|pending/[0-9a-f-]{36}\.bin"
    assert all(re.fullmatch(names, path) for path in stored), stored
    assert fake_vllm.requests[-1]["prompt"].endswith(HOSTILE_PROMPT), "the prompt reaches the engine as data"

    client = AsyncClient()
    await client.aforce_login(world.alice)
    staff = AsyncClient()
    await staff.aforce_login(world.staff)
    pages = [
        await client.get(f"/jobs/{job.pk}/"),
        await client.get("/jobs/"),
        await client.get("/"),
        await staff.get(f"/admin/ocr/ocrjob/{job.pk}/change/"),
        await staff.get("/admin/ocr/ocrjob/"),
    ]
    for page in pages:
        html = page.content.decode()
        assert page.status_code == 200
        assert "<img src=x" not in html
        assert "&lt;img src=x onerror=alert(&quot;name&quot;)&gt;" in html, page.wsgi_request.path
    assert "&lt;img src=x onerror=alert(&quot;prompt&quot;)&gt;" in pages[0].content.decode()
    assert SECRET_KEY not in pages[0].content.decode() and settings.SECRET_KEY not in pages[0].content.decode()

    download = await client.get(f"/jobs/{job.pk}/result.md")
    disposition = download["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition and "/" not in disposition.split("filename", 1)[1]
    assert "X-Injected" not in download


def stored_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.*"))


APP_PACKAGES = ("myocr", "ocr", "accounts")
FORBIDDEN_CALLS = {"os.system", "os.popen", "os.exec", "os.spawn", "subprocess", "eval", "exec", "pty"}


def test_the_application_code_never_runs_a_shell_or_evaluates_strings():
    """Nothing in the app's own packages can hand a file name or prompt to a shell or an interpreter."""
    offences = []
    for package in APP_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                    offences += [f"{path}: import {m}" for m in modules if m.split(".")[0] in ("subprocess", "pty")]
                elif isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    if name in ("eval", "exec") or name.startswith(("os.system", "os.popen", "os.exec", "os.spawn")):
                        offences.append(f"{path}:{node.lineno}: {name}(…)")
                    if any(kw.arg == "shell" for kw in node.keywords):
                        offences.append(f"{path}:{node.lineno}: shell=")
    assert offences == []


# --- redirects --------------------------------------------------------------------------------------------


async def test_sign_in_and_the_language_switch_never_redirect_off_site(world):
    client = AsyncClient()
    login = await client.post(
        "/accounts/login/?next=https://evil.example/", {"username": "alice", "password": PASSWORD}
    )
    language = await client.post("/i18n/setlang/", {"language": "en", "next": "https://evil.example/"})

    assert login.status_code == 302 and login["Location"] == "/"
    assert language.status_code == 302 and "evil.example" not in language["Location"]


async def test_a_token_secret_is_shown_once_and_never_again(world):
    client = AsyncClient()
    await client.aforce_login(world.alice)
    posted = await client.post("/accounts/tokens/", {"name": "laptop"})
    assert posted.status_code == 302
    created = await client.get("/accounts/tokens/")
    secret = re.search(r"mocr_[A-Za-z0-9_-]{20,}", created.content.decode()).group(0)

    again = await client.get("/accounts/tokens/")
    admin_client = AsyncClient()
    await admin_client.aforce_login(world.staff)
    token = await ApiToken.objects.aget(name="laptop")
    admin_page = await admin_client.get(f"/admin/accounts/apitoken/{token.pk}/change/")

    assert created.status_code == 200
    assert secret not in again.content.decode()
    assert secret not in admin_page.content.decode() and token.digest not in admin_page.content.decode()
