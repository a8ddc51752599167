"""What the inline middleware (``myocr/middleware.py``) saves against Django's own classes, per request.

Both stacks run in this process under Django's ASGI handler (``AsyncClient``), in alternating rounds, on three
requests: an API call that uses no session (``GET /api/users/me`` with a token), a page that reads the session
and sets a CSRF cookie (``GET /accounts/login/``), and a 404 under ``/api/``. The figure is CPU time per request;
the ratio is inline over stock.

    python -m bench.middleware [--requests 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time

STOCK = {
    "myocr.middleware.SecurityMiddleware": "django.middleware.security.SecurityMiddleware",
    "myocr.middleware.SessionMiddleware": "django.contrib.sessions.middleware.SessionMiddleware",
    "myocr.middleware.LocaleMiddleware": "django.middleware.locale.LocaleMiddleware",
    "myocr.middleware.CommonMiddleware": "django.middleware.common.CommonMiddleware",
    "myocr.middleware.CsrfViewMiddleware": "django.middleware.csrf.CsrfViewMiddleware",
    "myocr.middleware.AuthenticationMiddleware": "django.contrib.auth.middleware.AuthenticationMiddleware",
    "myocr.middleware.MessageMiddleware": "django.contrib.messages.middleware.MessageMiddleware",
    "myocr.middleware.XFrameOptionsMiddleware": "django.middleware.clickjacking.XFrameOptionsMiddleware",
}


async def cpu_per_request(middleware: list[str], path: str, headers: dict[str, str], requests: int) -> float:
    from django.test import AsyncClient, override_settings

    with override_settings(MIDDLEWARE=middleware):
        client = AsyncClient()
        status = (
            await client.get(path, headers=headers)
        ).status_code  # builds the middleware chain and warms the caches
        assert status in (200, 404), f"{path} answered {status}"
        started = time.process_time()
        for _ in range(requests):
            await client.get(path, headers=headers)
        return (time.process_time() - started) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myocr.settings")
    os.environ.setdefault("DEBUG", "true")
    data = tempfile.mkdtemp(prefix="bench-middleware-")
    os.environ["DATABASE_URL"] = f"sqlite:///{data}/bench.sqlite3"  # a file: the threads' connections share it
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    logging.getLogger("django.request").setLevel(logging.ERROR)  # the 404s are the point, not news
    from django.contrib.auth import get_user_model

    from accounts.tokens import token_create

    user = get_user_model().objects.create_user("bench", password="bench-password-0123")  # noqa: S106  (a throwaway database)
    token = token_create(user=user, name="bench").secret
    inline = list(settings.MIDDLEWARE)
    stock = [STOCK.get(name, name) for name in inline]
    cases = [
        ("GET /api/users/me (token)", "/api/users/me", {"Authorization": f"Bearer {token}"}),
        ("GET /accounts/login/ (session, CSRF, template)", "/accounts/login/", {}),
        ("GET /api/nothing-here (404 JSON)", "/api/nothing-here", {}),
    ]
    print(f"Middleware: CPU per request, {args.rounds} alternating rounds of {args.requests} requests (median)")
    for title, path, headers in cases:
        samples: dict[str, list[float]] = {"inline": [], "stock": []}
        for _ in range(args.rounds):
            for name, stack in (("stock", stock), ("inline", inline)):
                samples[name].append(asyncio.run(cpu_per_request(stack, path, headers, args.requests)))
        inline_us = statistics.median(samples["inline"]) * 1e6
        stock_us = statistics.median(samples["stock"]) * 1e6
        print(f"  {title}: stock {stock_us:.0f} µs, inline {inline_us:.0f} µs, ratio {inline_us / stock_us:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
