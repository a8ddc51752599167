"""A server with production settings (``DEBUG=false``, collected static files served by WhiteNoise) for the
security tests: headers, cookies and the Content-Security-Policy are those a deployment sends."""

from __future__ import annotations

from pathlib import Path

from .servers import AppServer

SECRET_KEY = "production-like-test-key-5b1e0c7f9a2d4e6b8c0a1f3e5d7b9c2a4e6f8b0d"  # noqa: S105


def production_env(data_dir: Path, *, https_proxy: bool) -> dict[str, str]:
    """Production settings. ``https_proxy``: behind a TLS proxy (clients send ``X-Forwarded-Proto: https``), with
    every secure default on; otherwise plain HTTP on loopback, the only change being cookies that a browser
    accepts over HTTP and no redirect to HTTPS."""
    env = {
        "DEBUG": "false",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "STATIC_ROOT": str(data_dir / "static"),
        "LOG_LEVEL": "INFO",
    }
    if https_proxy:
        env["USE_X_FORWARDED_PROTO"] = "true"
    else:
        env.update(SECURE_SSL_REDIRECT="false", SESSION_COOKIE_SECURE="false", CSRF_COOKIE_SECURE="false")
    return env


def production_server(data_dir: Path, *, https_proxy: bool, **env: str) -> AppServer:
    """Collect the static files and return the server (not started yet)."""
    server = AppServer(data_dir, {**production_env(data_dir, https_proxy=https_proxy), **env})
    server.manage("collectstatic", "--noinput", "-v0")
    return server


def create_superuser(server: AppServer, username: str, password: str) -> None:
    server.manage(
        "createsuperuser",
        "--noinput",
        "--username",
        username,
        "--email",
        "",
        env={"DJANGO_SUPERUSER_PASSWORD": password},
    )
