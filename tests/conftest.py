"""Shared fixtures: users and tokens, engine switching, the fake vLLM server, app servers in real processes,
NDJSON helpers."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from accounts.tokens import token_create
from testing.fake_vllm import FakeVllm
from testing.production import production_server
from testing.servers import AppServer

from .contract import streamed_text

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def thread_connections_closed() -> Any:
    """Close the database connections that async ORM calls opened in asgiref's worker thread, so that
    PostgreSQL can drop the test database at the end of the run."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def close_thread_connections(request: pytest.FixtureRequest) -> None:
    """``thread_connections_closed`` for every test but the browser tests: Playwright's sync API owns their
    thread's event loop, and they reach the database only through a server process."""
    if request.node.get_closest_marker("browser") is None:
        request.getfixturevalue("thread_connections_closed")


def sign_in(page: Any, server: Any, username: str, password: str = PASSWORD) -> Any:
    """Sign ``page`` in as ``username`` through the login form, as a person would, in whatever language the page
    speaks (the fields are found by their names); returns the page."""
    page.goto(f"{server.url}/accounts/login/")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.locator("form:has(input[name=password]) [type=submit]").click()
    page.wait_for_url(f"{server.url}/")
    return page


@pytest.fixture
async def fresh_channel_layer() -> Any:
    """The in-memory channel layer is per process: the test starts and ends with empty groups, on its own loop."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    await layer.flush()
    yield layer
    await layer.flush()


@pytest.fixture(autouse=True)
def clear_cache() -> None:
    """The sign-in and registration rate limits count in the cache: every test starts with none counted."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def fake_vllm_server() -> Iterator[Any]:
    """One fake vLLM server for the whole run, on a free loopback port, in a background thread."""
    with FakeVllm.run_in_thread() as fake:
        yield fake


@pytest.fixture
def fake(fake_vllm_server: Any) -> Iterator[Any]:
    """The session's fake vLLM server, reset before and after the test (for tests against a server process)."""
    fake_vllm_server.reset()
    yield fake_vllm_server
    fake_vllm_server.reset()


class AppServers:
    """Starts app servers (``testing.servers.AppServer``) and stops every one it started at teardown."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.started: list[AppServer] = []

    def __call__(
        self,
        env: Mapping[str, str],
        *,
        name: str = "app",
        data_dir: Path | None = None,
        log_name: str = "server.log",
        production: bool = False,
        https_proxy: bool = False,
        workers: int = 1,
    ) -> AppServer:
        """A started server with ``env`` (the module's engine URL, concurrency, flush seconds...). ``data_dir``:
        another server's, to restart it or to run a second process beside it (then give it its own ``log_name``).
        ``production``: production settings (``testing.production``), behind a TLS proxy if ``https_proxy``."""
        data_dir = data_dir or self.tmp_path_factory.mktemp(name)
        if production:
            server = production_server(data_dir, https_proxy=https_proxy, **env)
            server.log_path = data_dir / log_name
        else:
            server = AppServer(data_dir, env, workers=workers, log_path=data_dir / log_name)
        self.started.append(server)  # before it starts: a server that fails to get ready is stopped too
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServers]:
    """``app_server(env, name=...)`` starts a server for this test; it is stopped when the test ends."""
    servers = AppServers(tmp_path_factory)
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def module_app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServers]:
    """``module_app_server(env, name=...)`` starts a server shared by a module's tests, stopped after the last."""
    servers = AppServers(tmp_path_factory)
    yield servers
    servers.stop_all()


CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


def chromium_path() -> str | None:
    """Debian's Chromium (``CHROMIUM_PATH`` overrides); Playwright never downloads its own browser here."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured
    return next((path for path in CHROMIUM_CANDIDATES if Path(path).exists()), shutil.which("chromium"))


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium per browser test module. Playwright stops at the end of the module: while it runs, its event
    loop occupies this thread, which the async tests of other modules need."""
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (make system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def fake_vllm(fake_vllm_server: Any, settings: Any) -> Iterator[Any]:
    """The fake vLLM server, reset, with the app configured to use it through the real ``openai`` client."""
    fake_vllm_server.reset()
    settings.OCR_ENGINE = "openai"
    settings.LLM_BASE_URL = fake_vllm_server.base_url
    settings.LLM_API_KEY = "EMPTY"
    settings.OCR_ENGINE_FIRST_TOKEN_TIMEOUT = 5.0
    settings.OCR_ENGINE_IDLE_TIMEOUT = 2.0
    settings.OCR_ENGINE_TOTAL_TIMEOUT = 30.0
    yield fake_vllm_server
    fake_vllm_server.reset()
    close_engine_clients()


def close_engine_clients() -> None:
    """Close the engine clients a test's event loop left open: each loop gets its own connection pool, and an
    unclosed pool is reported when it is garbage-collected."""
    from ocr import engines
    from ocr.engines.vllm import VllmEngine

    for engine in list(engines._engines.values()):
        if isinstance(engine, VllmEngine):
            for loop, client in list(engine._clients.items()):
                if not loop.is_closed() and not loop.is_running():
                    loop.run_until_complete(client.close())
            engine._clients.clear()


@pytest.fixture
def local_engine(settings: Any) -> None:
    settings.OCR_ENGINE = "local"


def make_user(username: str, *, staff: bool = False) -> Any:
    return get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=staff)


@pytest.fixture
def alice(transactional_db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(transactional_db: None) -> Any:
    return make_user("bob")


@pytest.fixture
def alice_token(alice: Any) -> str:
    return token_create(user=alice, name="tests").secret


@pytest.fixture
def bob_token(bob: Any) -> str:
    return token_create(user=bob, name="tests").secret


class Api:
    """Calls the API through Django's ASGI handler, with a bearer token, and reads NDJSON streams."""

    def __init__(self, token: str | None) -> None:
        self.client = AsyncClient()
        self.token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def post_file(
        self, endpoint: str, data: bytes, *, name: str = "upload.bin", prompt: str | None = None
    ) -> Any:
        from django.core.files.uploadedfile import SimpleUploadedFile

        form: dict[str, Any] = {"file": SimpleUploadedFile(name, data, content_type="application/octet-stream")}
        if prompt is not None:
            form["prompt"] = prompt
        return await self.client.post(f"/api/ocr/{endpoint}", form, headers=self.headers())

    async def ocr(self, endpoint: str, data: bytes, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
        """POST a file and read the whole NDJSON stream; returns the response and its frames."""
        response = await self.post_file(endpoint, data, **kwargs)
        if not response.streaming:
            return response, []
        body = b"".join([chunk async for chunk in response.streaming_content])
        return response, parse_ndjson(body)

    async def get(self, path: str) -> Any:
        return await self.client.get(path, headers=self.headers())


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n"), "an NDJSON stream ends with a newline"
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


@pytest.fixture
def api(alice_token: str) -> Api:
    return Api(alice_token)


@pytest.fixture
def bob_api(bob_token: str) -> Api:
    return Api(bob_token)


def frames_of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


def page_text(frames: list[dict[str, Any]], page: int) -> str:
    return streamed_text(frames, page)


def image_text(frames: list[dict[str, Any]]) -> str:
    return streamed_text(frames)
