"""``python manage.py ocr FILE [--prompt ...]``: OCR a local file and print the API's NDJSON frames."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.authentication import anonymous_user
from ocr import intake
from ocr.api_forms import prompt_or_default
from ocr.errors import OcrError
from ocr.events import ErrorCode
from ocr.models import JobSource
from ocr.pipeline import prepare_job
from ocr.prompts import PromptError
from ocr.transports import ndjson_stream


class Command(BaseCommand):
    help = "OCR an image or a PDF with the configured engine and print the NDJSON frames to stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--prompt", default="", help="Prompt for the engine (default: LLM_PROMPT).")
        parser.add_argument("--user", default="", help="Record the job for this username (default: anonymous).")

    def handle(self, *args: object, **options: object) -> None:
        path: Path = options["file"]  # type: ignore[assignment]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            status = asyncio.run(self.run(path, str(options["prompt"]), str(options["user"])))
        except OcrError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        except PromptError as exc:
            raise CommandError(f"{ErrorCode.INVALID_PROMPT}: {exc.message}") from None
        if status not in ("done", "partial"):
            sys.exit(1)

    async def run(self, path: Path, raw_prompt: str, username: str) -> str:
        data = await asyncio.to_thread(path.read_bytes)
        kind = intake.job_kind(data)
        upload = intake.Upload(data=data, file_name=intake.clean_file_name(path.name))
        prompt = prompt_or_default(raw_prompt)
        owner = await self.owner(username)
        run = await prepare_job(
            owner=owner, upload=upload, kind=kind, source=JobSource.CLI, prompt=prompt, enforce_limits=False
        )
        engine = run.engine
        out = sys.stdout.buffer
        async for chunk in ndjson_stream(run.batches(), kind):
            out.write(chunk)
            out.flush()
        await engine.aclose()
        return run.status or "failed"

    async def owner(self, username: str):
        if not username:
            return await anonymous_user()
        try:
            return await get_user_model().objects.aget(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
