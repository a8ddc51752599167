"""A server with production settings (``DEBUG=false``, collected static files served by WhiteNoise) for the
security tests: headers, cookies and the Content-Security-Policy are those a deployment sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .server import ROOT, AppServer

SECRET_KEY = "production-like-test-key-5b1e0c7f9a2d4e6b8c0a1f3e5d7b9c2a4e6f8b0d"


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
    full_env = {**production_env(data_dir, https_proxy=https_proxy), **env}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env={**os.environ, "OCR_DATA_DIR": str(data_dir), **full_env},
        check=True,
    )
    return AppServer(data_dir, full_env)


def create_superuser(server: AppServer, username: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", username, "--email", ""],
        cwd=ROOT,
        env={**server.env, "DJANGO_SUPERUSER_PASSWORD": password},
        check=True,
        capture_output=True,
    )
