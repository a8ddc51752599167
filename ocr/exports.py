"""A job's result as a file: Markdown, plain text, JSON, a searchable PDF or a Word document, the same for the
browser's downloads and the API."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.http import HttpResponse
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _

from ocr import docx_export, searchable_pdf, selectors
from ocr.errors import OcrError
from ocr.events import ErrorCode
from ocr.models import OcrJob, OcrPage
from ocr.rendering import render_page

FORMATS = ("md", "txt", "json", "pdf", "docx")
DOCX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


class ExportUnavailable(OcrError):
    """The format needs the uploaded file, which is gone (deleted after the retention period, or lost).

    ``message`` is the API's English; ``user_message`` is for the browser, in the user's language.
    """

    status = 409
    code = ErrorCode.UPLOAD_GONE

    def __init__(self, message: str, *, user_message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.user_message = user_message


@dataclass(frozen=True, slots=True)
class Export:
    body: str | bytes
    content_type: str
    file_name: str

    def response(self) -> HttpResponse:
        response = HttpResponse(self.body, content_type=self.content_type)
        response["Content-Disposition"] = content_disposition_header(True, self.file_name)
        response["X-Content-Type-Options"] = "nosniff"
        return response


def export_job(job: OcrJob, fmt: str) -> Export:
    """The result of ``job`` in ``fmt`` (one of ``FORMATS``). Reads its pages: call it off the event loop."""
    pages = list(job.pages.order_by("number"))
    if fmt == "pdf":
        return Export(
            body=_searchable_pdf(job, pages),
            content_type="application/pdf",
            file_name=download_name(job.file_name, "pdf"),
        )
    rendered = [(page, render_page(page.text, page.layout)) for page in pages]
    if fmt == "docx":
        return Export(
            body=_docx(job, rendered),
            content_type=DOCX_CONTENT_TYPE,
            file_name=download_name(job.file_name, "docx"),
        )
    if fmt == "json":
        data = selectors.job_as_dict(job, pages=pages)
        for detail, (_page, page_render) in zip(data["pages_detail"], rendered, strict=True):
            detail["markdown"] = page_render.markdown
            detail["blocks"] = [block.as_dict() for block in page_render.blocks]
        # UTF-8 as it is: a reader of the file sees the text, not \\u escapes.
        body = json.dumps(data, ensure_ascii=False, indent=2)
        content_type = "application/json; charset=utf-8"
    elif fmt == "md":
        body = _joined(job, [(page.number, page_render.markdown) for page, page_render in rendered], markdown=True)
        content_type = "text/markdown; charset=utf-8"
    else:
        body = _joined(job, [(page.number, page_render.plain) for page, page_render in rendered], markdown=False)
        content_type = "text/plain; charset=utf-8"
    return Export(body=body, content_type=content_type, file_name=download_name(job.file_name, fmt))


def export_page(job: OcrJob, page: OcrPage) -> Export | None:
    """One page's Markdown, as in the job's ``.md`` without the page markers; ``None`` when it has no text."""
    markdown = render_page(page.text, page.layout).markdown
    if not markdown:
        return None
    return Export(
        body=markdown + "\n",
        content_type="text/markdown; charset=utf-8",
        file_name=download_name(job.file_name, f"page-{page.number}.md"),
    )


def _searchable_pdf(job: OcrJob, pages: list) -> bytes:
    if not job.upload or job.upload_expired_at is not None:
        raise ExportUnavailable(
            "The uploaded file of this job was deleted, so there is no searchable PDF; the text is still there as "
            "Markdown, plain text or JSON.",
            user_message=_gone_message(),
        )
    try:
        with job.upload.open("rb") as file:
            original = file.read()
    except OSError:
        raise ExportUnavailable(
            "The uploaded file of this job cannot be read, so there is no searchable PDF; the text is still there "
            "as Markdown, plain text or JSON.",
            user_message=_gone_message(),
        ) from None
    texts = [
        searchable_pdf.page_text(page.number, page.text, page.layout)
        for page in pages
        # A page read from the PDF's own text layer is searchable already: a second layer would double its text.
        if page.source != "text_layer"
    ]
    try:
        if job.kind == "pdf":
            return searchable_pdf.searchable_pdf_from_pdf(original, texts)
        return searchable_pdf.searchable_pdf_from_image(original, texts[0] if texts else None)
    except searchable_pdf.FontMissingError as error:
        raise ExportUnavailable(
            str(error),
            user_message=_("This server has no font for the PDF's text layer; ask its administrator."),
            code=ErrorCode.PDF_FONT_MISSING,
            status=503,
        ) from None


def _docx(job: OcrJob, rendered: list) -> bytes:
    """Every page of the job, in order; a page without text (failed, cancelled, never read) says so."""
    by_number = {page.number: (page, page_render) for page, page_render in rendered}
    pages = []
    for number in range(1, max(job.page_count, len(rendered)) + 1):
        page, page_render = by_number.get(number, (None, None))
        if page is None:
            note = _("Page %(number)s was not read.") % {"number": number}
        elif page.error_message:
            note = _("Page %(number)s: %(reason)s") % {"number": number, "reason": page.error_message}
        else:
            note = _("No text was found on page %(number)s.") % {"number": number}
        pages.append(docx_export.DocxPage(number, page_render.markdown if page_render else "", note))
    return docx_export.build_docx(pages, title=job.file_name)


def _gone_message() -> str:
    return _("The uploaded file was deleted, so there is no searchable PDF. The text can still be downloaded.")


def _joined(job: OcrJob, texts: list[tuple[int, str]], *, markdown: bool) -> str:
    if len(texts) <= 1 and job.page_count <= 1:
        return (texts[0][1] if texts else "") + "\n"
    parts = []
    for number, text in texts:
        marker = f"<!-- page {number} -->" if markdown else f"===== {number} ====="
        parts.append(f"{marker}\n\n{text}".rstrip())
    return "\n\n".join(parts) + "\n"


def download_name(file_name: str, extension: str) -> str:
    """A safe download name: the upload's stem without path, control or quoting characters, plus ``extension``."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    stem = "".join(ch for ch in stem if ch.isprintable() and ch not in '\\/:*?"<>|;')
    stem = stem.strip(" .")[:100] or "ocr-result"
    return f"{stem}.{extension}"
