"""ASGI entry point, served by Daphne."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myocr.settings")

import django

# Populates the app registry; must run before anything imports models.
django.setup(set_prefix=False)

from myocr.handler import PooledThreadsASGIHandler, skip_twisted_form_parsing  # noqa: E402

skip_twisted_form_parsing()
django_application = PooledThreadsASGIHandler()

from django.conf import settings  # noqa: E402

from myocr.startup import ResumeOrphansAtFirstRequest, start_background_tasks  # noqa: E402
from myocr.upload_limit import UploadLimitMiddleware  # noqa: E402
from ocr.config import ocr_config  # noqa: E402

http_application = django_application
if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_application = ASGIStaticFilesHandler(http_application)

http_application = UploadLimitMiddleware(
    http_application,
    paths=("/api/ocr/", "/jobs/new", "/jobs/preview"),
    max_bytes=lambda: ocr_config().max_upload_bytes,
)

# HTTP only (Server-Sent Events and NDJSON streams are HTTP): no protocol router in front.
application = ResumeOrphansAtFirstRequest(http_application)

start_background_tasks()
