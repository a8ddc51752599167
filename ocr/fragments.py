"""The job page's pieces as HTML: the first render and every live update use the same templates.

Live updates travel as one SSE event per batch whose data are htmx out-of-band fragments (``hx-swap-oob``): the
text that arrived for a page is appended to its raw view, a page that starts or ends replaces its pane and its
entry in the page list, and the header, the progress bar and the usage panel are replaced when they change.
Replacing is idempotent, so a reconnecting browser can be sent the stored state again without duplicating anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import escape
from django.utils.translation import gettext as _

from ocr.error_texts import error_text
from ocr.live import Batch, Snapshot, Update
from ocr.models import JobStatus, OcrJob, OcrPage, PageStatus
from ocr.rendering import Overlay, RenderedPage, Segment, render_page

JOB_TEMPLATE = "ocr/job_detail.html"


def block_label(label: str) -> str:
    """The name of a kind of block (the engine's label) in the user's language; an unknown label as it is."""
    known = {
        "title": _("Title"),
        "sub_title": _("Subtitle"),
        "text": _("Text"),
        "table": _("Table"),
        "image": _("Image"),
        "figure": _("Figure"),
        "equation": _("Equation"),
        "caption": _("Caption"),
        "line": _("Line"),
    }
    return str(known.get(label, label))


def duration_formats() -> tuple[str, str]:
    """The two shapes of a duration in the active language: under a minute, and with minutes. The page's ticking
    clock (``static/js/app.js``) fills them in as the server does."""
    return _("%(seconds)s s"), _("%(minutes)s min %(seconds)02d s")


def duration_text(milliseconds: int) -> str:
    """``42 s`` or ``3 min 05 s``: how long something took or will take."""
    seconds = max(0, round(milliseconds / 1000))
    under_a_minute, with_minutes = duration_formats()
    if seconds < 60:
        return under_a_minute % {"seconds": seconds}
    return with_minutes % {"minutes": seconds // 60, "seconds": seconds % 60}


@dataclass(frozen=True, slots=True)
class SegmentView:
    """A piece of a page's text as the viewer shows it: linked to its boxes by ``block``, named by ``label``."""

    segment: Segment
    label: str

    @property
    def html(self) -> str:
        return self.segment.html

    @property
    def block(self) -> int | None:
        return self.segment.block

    @property
    def css_label(self) -> str:
        return self.segment.css_label


@dataclass(slots=True)
class PageView:
    number: int
    status: str
    text: str
    job_id: Any
    image: bool
    rendered: RenderedPage | None = None
    error: str = ""
    width: int | None = None
    height: int | None = None
    usage: dict[str, int] = field(default_factory=dict)
    duration_ms: int | None = None
    source: str = "ocr"

    @property
    def overlays(self) -> tuple[Overlay, ...]:
        return self.rendered.overlays if self.rendered else ()

    @property
    def segments(self) -> list[SegmentView]:
        if not self.rendered:
            return []
        return [
            SegmentView(segment, block_label(segment.label) if segment.block is not None else "")
            for segment in self.rendered.segments
        ]

    @property
    def has_text(self) -> bool:
        """Whether there is finished text to copy or download."""
        return bool(self.rendered and self.rendered.markdown)

    @property
    def is_running(self) -> bool:
        return self.status == PageStatus.RUNNING

    #: The job ended before this page was read (cancelled, failed or interrupted): it never will be.
    unread: bool = False
    #: The status of the page's job: the pages of a cancelled job that were never read are cancelled too.
    job_status: str = ""

    @property
    def is_queued(self) -> bool:
        return not self.status and not self.unread

    @property
    def css_status(self) -> str:
        """The page's status for the eye: ``queued`` before it starts, ``cancelled`` when it never will."""
        if self.unread:
            return PageStatus.CANCELLED
        return self.status or "queued"

    @property
    def status_label(self) -> str:
        if self.unread:
            return str(PageStatus.CANCELLED.label if self.job_status == JobStatus.CANCELLED else _("Not read"))
        if not self.status:
            return str(_("Queued"))
        return str(PageStatus(self.status).label)

    @property
    def found_nothing(self) -> bool:
        """A page that was read and holds no text (not one that failed or was cancelled)."""
        return self.status in (PageStatus.DONE, PageStatus.TRUNCATED) and not (self.rendered and self.rendered.markdown)


def page_view(page: OcrPage, job: OcrJob) -> PageView:
    finished = page.status not in ("", PageStatus.RUNNING)
    return PageView(
        number=page.number,
        status=page.status,
        text=page.text,
        job_id=job.pk,
        image=bool(job.upload),
        rendered=render_page(page.text, page.layout) if finished else None,
        error=error_text(page.error_code, page.error_message) if page.error_code else "",
        width=page.width,
        height=page.height,
        usage={
            "prompt_tokens": page.prompt_tokens,
            "completion_tokens": page.completion_tokens,
            "completion_chars": page.completion_chars or len(page.text),
        },
        duration_ms=page.duration_ms,
        source=page.source,
        unread=not page.status and job.is_finished,
        job_status=job.status,
    )


@dataclass(slots=True)
class Elapsed:
    """A panel that shows how long the job has run (or ran), ticked on by the page's clock while it runs."""

    elapsed_ms: int

    @property
    def elapsed(self) -> str:
        return duration_text(self.elapsed_ms)

    @property
    def duration_formats(self) -> tuple[str, str]:
        """For the page's clock, which ticks the elapsed time on between updates."""
        return duration_formats()


@dataclass(slots=True)
class ProgressView(Elapsed):
    """The progress bar: how many of the job's pages have ended, which are being read, and, once a page has
    ended, an estimate of the time left from the pace so far (pages run in parallel, so the pace is the job's,
    not one page's)."""

    pages: int
    ended: int
    reading: list[int]
    running: bool
    started_at: datetime
    #: Pages that ended in this run (since ``started_at``): the pace. A retried or resumed job's earlier pages
    #: count as ended but took none of this run's time.
    paced: int = 0

    @property
    def percent(self) -> int:
        return round(100 * self.ended / self.pages) if self.pages else 0

    @property
    def remaining_ms(self) -> int | None:
        left = self.pages - self.ended
        if not self.running or not self.paced or left <= 0:
            return None
        return self.elapsed_ms * left // self.paced

    @property
    def remaining(self) -> str:
        remaining = self.remaining_ms
        return duration_text(remaining) if remaining is not None else ""


def progress_view(job: OcrJob, pages: list[OcrPage]) -> ProgressView:
    final = [page for page in pages if page.status in PageStatus.final()]
    running = not job.is_finished
    started = job.claimed_at or job.created_at
    paced = sum(1 for page in final if page.finished_at is None or page.finished_at >= started)
    elapsed_ms = int((timezone.now() - started).total_seconds() * 1000) if running else job.duration_ms or 0
    return ProgressView(
        pages=max(job.page_count, len(pages)),
        ended=len(final),
        paced=paced,
        reading=sorted(page.number for page in pages if page.status == PageStatus.RUNNING) if running else [],
        elapsed_ms=max(0, elapsed_ms),
        running=running,
        started_at=started,
    )


@dataclass(slots=True)
class UsageView(Elapsed):
    """What the usage panel shows; while a job runs, characters grow with the text and tokens with each page."""

    prompt_tokens: int
    completion_tokens: int
    prompt_chars: int
    completion_chars: int
    input_bytes: int
    pages: int
    pages_done: int
    estimated: bool
    running: bool
    started_at: datetime

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_view(job: OcrJob, pages: list[OcrPage], *, live_chars: dict[int, int] | None = None) -> UsageView:
    if job.is_finished:
        return UsageView(
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
            prompt_chars=job.prompt_chars,
            completion_chars=job.completion_chars,
            input_bytes=job.input_bytes,
            pages=job.page_count,
            pages_done=job.pages_done,
            elapsed_ms=job.duration_ms or 0,
            estimated=job.usage_estimated,
            running=False,
            started_at=job.created_at,
        )
    ended = [page for page in pages if page.status and page.status != PageStatus.RUNNING]
    chars = {page.number: len(page.text) for page in pages}
    chars.update(live_chars or {})
    return UsageView(
        prompt_tokens=sum(page.prompt_tokens for page in ended),
        completion_tokens=sum(page.completion_tokens for page in ended),
        prompt_chars=len(job.prompt) * len(ended),
        completion_chars=sum(chars.values()),
        input_bytes=job.input_bytes,
        pages=job.page_count,
        pages_done=sum(1 for page in ended if page.status in (PageStatus.DONE, PageStatus.TRUNCATED)),
        elapsed_ms=int((timezone.now() - job.created_at).total_seconds() * 1000),
        estimated=any(page.usage_estimated for page in ended),
        running=True,
        started_at=job.created_at,
    )


def render_part(part: str, context: dict[str, Any]) -> str:
    return render_to_string(f"{JOB_TEMPLATE}#{part}", context)


def oob(html: str) -> str:
    """Mark the fragment's root element as an out-of-band swap (outerHTML of the element with the same id)."""
    return html.replace(" data-oob", ' hx-swap-oob="true"', 1)


class LiveRenderer:
    """Turns a feed's updates into SSE events for one client, remembering what it needs for the usage panel."""

    def __init__(self, *, job: OcrJob, csrf_token: str, pages: list[OcrPage] | None = None) -> None:
        self.job = job
        self.csrf_token = csrf_token
        # The stored pages the client shows already: the progress bar counts them too.
        self.pages: dict[int, OcrPage] = {page.number: page for page in pages or () if page.status}
        self.live_chars: dict[int, int] = {}

    def _context(self, **extra: Any) -> dict[str, Any]:
        return {"job": self.job, "csrf_token": self.csrf_token, **extra}

    def render(self, update: Update) -> str:
        if isinstance(update, Snapshot):
            return self._snapshot(update)
        return self._batch(update)

    def _snapshot(self, snapshot: Snapshot) -> str:
        self.job = snapshot.job
        self.pages = {page.number: page for page in snapshot.pages}
        self.live_chars = {}
        parts = [oob(render_part("header", self._context(has_text=self._has_text()))), *self._progress()]
        numbers = range(1, max(self.job.page_count, max(self.pages, default=0)) + 1)
        for number in numbers:
            page = self.pages.get(number) or OcrPage(job=self.job, number=number, status="")
            parts.extend(self._page(page))
        return "\n".join(parts)

    def _batch(self, batch: Batch) -> str:
        parts: list[str] = []
        deltas: dict[int, list[str]] = {}
        resets: set[int] = set()
        for event in batch.events:
            kind = event["type"]
            if kind == "start" and self.job.status == JobStatus.QUEUED:
                # A runner took the queued job: the header says it runs now, and its clock starts now.
                self.job.status = JobStatus.RUNNING
                self.job.claimed_at = timezone.now()
                parts.append(oob(render_part("header", self._context(has_text=self._has_text()))))
            elif kind == "page_start":
                number = event["page"]
                page = OcrPage(job=self.job, number=number, status=PageStatus.RUNNING)
                self.pages[number] = page
                self.live_chars[number] = 0
                parts.extend(self._page(page))
            elif kind == "page_delta":
                number = event["page"]
                if event.get("reset"):
                    deltas[number] = []
                    resets.add(number)
                    self.live_chars[number] = 0
                deltas.setdefault(number, []).append(event["delta"])
                self.live_chars[number] = self.live_chars.get(number, 0) + len(event["delta"])
        for number, pieces in deltas.items():
            text = escape("".join(pieces))
            # A reset replaces the text shown so far; otherwise the new text is appended to it.
            swap = "innerHTML" if number in resets else "beforeend"
            parts.append(f'<span id="raw-{number}" hx-swap-oob="{swap}">{text}</span>')
        for number, page in batch.ended_pages.items():
            self.pages[number] = page
            self.live_chars.pop(number, None)
            parts.extend(self._page(page))
        if batch.ended_pages or any(event["type"] == "page_start" for event in batch.events):
            parts.extend(self._progress())
        elif deltas:
            parts.append(self._usage())
        return "\n".join(parts)

    def _page(self, page: OcrPage) -> list[str]:
        """A page's pane and its entry in the page list."""
        context = self._context(page=page_view(page, self.job))
        return [oob(render_part("page", context)), oob(render_part("page_link", context))]

    def _has_text(self) -> bool:
        return any(page.text for page in self.pages.values())

    def _progress(self) -> list[str]:
        """The progress bar and the usage panel, which change together."""
        progress = progress_view(self.job, list(self.pages.values()))
        return [oob(render_part("progress", self._context(progress=progress))), self._usage()]

    def _usage(self) -> str:
        usage = usage_view(self.job, list(self.pages.values()), live_chars=self.live_chars)
        return oob(render_part("usage", self._context(usage=usage)))
