"""The fields of an OCR request to the API beside its files (``POST /api/ocr/image|pdf``, ``POST /api/jobs``), as
a form, checked by the rules the page's upload form uses (``ocr.prompts``, ``TEXT_LAYER_CHOICES``). The API
answers in English with stable codes; the page form says the same in the user's language."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django import forms
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from myocr.http import ApiError
from ocr import intake
from ocr.config import TEXT_LAYER_CHOICES, ocr_config
from ocr.errors import IntakeError
from ocr.events import ErrorCode
from ocr.prompts import PromptError, check_prompt

#: Files one ``POST /api/jobs`` may carry.
MAX_BATCH_FILES = 100


class OcrRequestForm(forms.Form):
    # Plain fields, not ``CharField``s: its own checks (a NUL character) would answer with codes of their own
    # before ours, and the codes are the contract. Each field is checked below, as it always was.
    prompt = forms.Field(required=False)
    text_layer = forms.Field(required=False)
    callback_url = forms.Field(required=False)

    def clean_prompt(self) -> str:
        try:
            return prompt_or_default(self.cleaned_data["prompt"])
        except PromptError as exc:
            raise forms.ValidationError(exc.message, code=ErrorCode.INVALID_PROMPT) from None

    def clean_text_layer(self) -> str:
        """``auto`` (read a PDF page from its text layer when it is usable), ``ocr`` (OCR every page), or "" for
        the server's ``OCR_PDF_TEXT_LAYER``."""
        value = (self.cleaned_data["text_layer"] or "").strip()
        if value and value not in TEXT_LAYER_CHOICES:
            raise forms.ValidationError(
                f"text_layer is one of {', '.join(TEXT_LAYER_CHOICES)}.", code=ErrorCode.INVALID_TEXT_LAYER
            )
        return value

    def clean_callback_url(self) -> str:
        return self.cleaned_data["callback_url"] or ""  # checked by ``webhooks.validate_callback_url``, unstripped

    def api_error(self) -> ApiError:
        """The first problem, as the API answers it."""
        for errors in self.errors.as_data().values():
            error = errors[0]
            return ApiError(" ".join(error.messages), code=error.code or ErrorCode.INVALID_REQUEST)
        raise ValueError("the form is valid")


def prompt_or_default(raw: str | None) -> str:
    """The prompt a request asked for, or the server's default for none. Raises ``PromptError``."""
    prompt = (raw or "").strip()
    if not prompt:
        return ocr_config().default_prompt
    check_prompt(prompt)
    return prompt


async def read_ocr_request(request: HttpRequest, *, batch: bool) -> tuple[list[intake.Upload], OcrRequestForm]:
    """The uploaded ``file`` fields of a multipart request (one, or up to ``MAX_BATCH_FILES`` for a ``batch``) and
    its other fields, validated."""
    field = "fields named 'file'" if batch else "a field named 'file'"
    if (request.content_type or "") != "multipart/form-data":
        raise IntakeError(
            f"Send the {'files' if batch else 'file'} as multipart/form-data in {field}.",
            code=ErrorCode.MISSING_FILE,
            status=400,
        )

    def parse() -> tuple[list[intake.Upload], OcrRequestForm]:
        files = request.FILES.getlist("file")
        if not batch:
            files = files[-1:]  # as ever: of several ``file`` fields the one-file endpoints read the last
        if len(files) > MAX_BATCH_FILES:
            raise IntakeError(f"Send at most {MAX_BATCH_FILES} files at once.", code=ErrorCode.TOO_MANY_FILES)
        uploads = [intake.Upload(data=file.read(), file_name=intake.clean_file_name(file.name)) for file in files]
        return uploads, OcrRequestForm(request.POST)

    try:
        # Django's multipart parser is pure Python and copies the file: off the event loop, which under a burst
        # of uploads is the bottleneck for everyone's first frame.
        uploads, form = await sync_to_async(parse, thread_sensitive=False)()
    except MultiPartParserError:
        raise IntakeError(
            "The multipart/form-data body could not be read.", code=ErrorCode.BAD_REQUEST, status=400
        ) from None
    if not uploads:
        raise IntakeError("No file in the request: send it in a field named 'file'.", code=ErrorCode.MISSING_FILE)
    if not form.is_valid():
        raise form.api_error()
    return uploads, form
