"""Static files in production settings: WhiteNoise under ASGI with async bodies, no sync-iterator warning."""

from __future__ import annotations

import json
import warnings

import pytest
from django.core.management import call_command
from django.test import AsyncClient, override_settings

ASYNC_WHITENOISE = "myocr.staticfiles.AsyncWhiteNoiseMiddleware"
SYNC_ITERATOR_WARNING = "StreamingHttpResponse must consume synchronous iterators"


@pytest.fixture
def production_static(settings, tmp_path):
    """DEBUG off, collected and hashed static files, the given WhiteNoise middleware after SecurityMiddleware."""
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]

    def use(middleware: str) -> str:
        stack = [name for name in settings.MIDDLEWARE if "WhiteNoise" not in name]
        security = next(i for i, name in enumerate(stack) if name.endswith(".SecurityMiddleware"))
        settings.MIDDLEWARE = [*stack[: security + 1], middleware, *stack[security + 1 :]]
        return "/static/" + manifest["css/app.css"]

    return use


def test_the_production_settings_use_the_async_whitenoise():
    import subprocess
    import sys

    code = "from django.conf import settings; print(settings.MIDDLEWARE)"
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={"DJANGO_SETTINGS_MODULE": "myocr.settings", "DEBUG": "false", "SECRET_KEY": "x" * 50, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ASYNC_WHITENOISE in out


async def test_static_files_stream_asynchronously_without_the_warning(production_static, tmp_path):
    path = production_static(ASYNC_WHITENOISE)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any sync-iterator warning fails the test
        response = await AsyncClient().get(path)
        body = b"".join([chunk async for chunk in response])

    assert response.status_code == 200
    assert response.is_async
    assert body == (tmp_path / path.removeprefix("/static/")).read_bytes()
    assert response["Content-Type"].startswith("text/css")
    assert "immutable" in response["Cache-Control"]


async def test_compressed_variants_and_conditional_requests_still_work(production_static):
    path = production_static(ASYNC_WHITENOISE)
    client = AsyncClient()

    compressed = await client.get(path, headers={"Accept-Encoding": "gzip"})
    body = b"".join([chunk async for chunk in compressed])
    not_modified = await client.get(path, headers={"If-None-Match": compressed["ETag"]})

    assert compressed["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    assert not_modified.status_code == 304


async def test_plain_whitenoise_would_warn_on_every_file(production_static):
    """The check above can fail: WhiteNoise's own middleware hands Django a synchronous file iterator."""
    path = production_static("whitenoise.middleware.WhiteNoiseMiddleware")

    response = await AsyncClient().get(path)

    with pytest.warns(Warning, match=SYNC_ITERATOR_WARNING):
        b"".join([chunk async for chunk in response])


async def test_pages_still_reach_django_behind_the_static_middleware(production_static, transactional_db):
    production_static(ASYNC_WHITENOISE)
    with override_settings(SECURE_SSL_REDIRECT=False):
        response = await AsyncClient().get("/accounts/login/")

    assert response.status_code == 200
