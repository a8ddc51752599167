"""The upload form of the OCR page and its prompt presets."""

from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ocr.config import ocr_config
from ocr.engines.profiles import DOCUMENT_PROMPT
from ocr.prompts import MAX_PROMPT_CHARS, PromptError, check_prompt


@dataclass(frozen=True, slots=True)
class Preset:
    key: str
    label: str | Promise
    help: str | Promise
    prompt: str  # "" for the server's default prompt; "{text}" is replaced by what the user typed
    #: The embedded engine can do it: it reads text (as Markdown, with boxes) and follows no prompt.
    embedded: bool = False

    @property
    def max_text_chars(self) -> int:
        """The longest text the user may type for this preset: the prompt it makes stays within the limit."""
        if "{text}" not in self.prompt:
            return MAX_PROMPT_CHARS
        return MAX_PROMPT_CHARS - len(self.prompt.replace("{text}", ""))


PRESETS: tuple[Preset, ...] = (
    Preset(
        "default", _("Plain text"), _("The server's default prompt (DeepSeek-OCR: “Free OCR.”)."), "", embedded=True
    ),
    Preset("markdown", _("Markdown"), _("Text as Markdown."), "Free OCR, output markdown.", embedded=True),
    Preset(
        "document",
        _("Document with layout"),
        _("Deep document parsing: Markdown plus the position of every block (boxes)."),
        DOCUMENT_PROMPT,
        embedded=True,
    ),
    Preset(
        "image_layout",
        _("Other image with layout"),
        _("OCR of a photo or screenshot, with boxes."),
        "<|grounding|>OCR this image.",
        embedded=True,
    ),
    Preset(
        "describe",
        _("Describe the image"),
        _("A description of the picture in words."),
        "Describe this image in detail.",
    ),
    Preset("figure", _("Parse a figure"), _("Charts and figures inside documents."), "Parse the figure."),
    Preset(
        "locate",
        _("Find a phrase"),
        _("Boxes around a phrase: type the phrase below."),
        "Locate <|ref|>{text}<|/ref|> in the image.",
    ),
    Preset("custom", _("Custom prompt"), _("Type your own prompt below."), "{text}"),
)
PRESETS_BY_KEY = {preset.key: preset for preset in PRESETS}
PROMPT_PROBLEMS = {
    "too_long": _("The prompt is too long."),
    "not_allowed": _("The text contains a character that is not allowed."),
}
EMBEDDED_CANNOT = _("The embedded CPU engine reads text only: this needs the DeepSeek-OCR engine.")


#: The most files one upload form starts at once (one job each).
MAX_BATCH_FILES = 20


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files under one name; cleans to a list (empty when none was chosen)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def clean(self, data: object, initial: object = None) -> list:
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(item, initial) for item in data if item]
        return [single(data, initial)] if data else []


class JobOptionsForm(forms.Form):
    """What to read and how: the part of the upload form that "Run again" asks for too."""

    preset = forms.ChoiceField(
        label=_("What to read"),
        choices=[(preset.key, preset.label) for preset in PRESETS],
        initial="default",
        widget=forms.RadioSelect,
    )
    text_layer = forms.ChoiceField(
        label=_("PDF pages with their own text"),
        choices=[
            ("auto", _("Read the text layer when it is usable (fast, exact)")),
            ("ocr", _("OCR every page")),
        ],
        required=False,
        widget=forms.RadioSelect,
    )
    # The server-side check of the prompt's length is ``check_prompt`` (in ``clean``); this is the form's.
    text = forms.CharField(
        label=_("Prompt or phrase"),
        required=False,
        max_length=MAX_PROMPT_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["text_layer"].initial = ocr_config().pdf_text_layer

    def clean(self) -> dict:
        data = super().clean()
        preset = PRESETS_BY_KEY.get(data.get("preset") or "default")
        text = (data.get("text") or "").strip()
        if preset is None:
            return data
        if ocr_config().engine == "local" and not preset.embedded:
            self.add_error("preset", EMBEDDED_CANNOT)
            return data
        if "{text}" in preset.prompt and not text:
            self.add_error("text", _("Type the prompt or the phrase to find."))
            return data
        prompt = preset.prompt.replace("{text}", text) if preset.prompt else ocr_config().default_prompt
        try:
            check_prompt(prompt)
        except PromptError as exc:
            self.add_error("text", PROMPT_PROBLEMS[exc.reason])
            return data
        data["prompt"] = prompt
        return data


class UploadForm(JobOptionsForm):
    """The upload form: files chosen now and files kept from before (``kept``: the owner's pending uploads the
    form's hidden fields named, ``ocr/pending.py``), one job each. ``asked_for`` is how many pending uploads the
    form named: those missing from ``kept`` have expired (or were used)."""

    file = MultipleFileField(label=_("Images or PDFs"))

    def __init__(self, *args: object, kept: list | None = None, asked_for: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.kept = list(kept or [])
        self.asked_for = asked_for

    def clean(self) -> dict:
        data = super().clean()
        files = data.get("file") or []
        count = len(files) + len(self.kept)
        if "file" in self.errors:
            return data
        if count == 0:
            if self.asked_for:
                self.add_error("file", _("The file chosen before is no longer kept on the server: choose it again."))
            else:
                self.add_error("file", _("Choose an image or a PDF."))
        elif self.asked_for > len(self.kept):
            # Some of the files checked before are gone (expired, or started from another tab): say so rather
            # than start the others without them; the ones still kept stay ticked for the next Start.
            missing = self.asked_for - len(self.kept)
            self.add_error(
                "file",
                ngettext(
                    "%(count)s file chosen before is no longer kept on the server: choose it again.",
                    "%(count)s files chosen before are no longer kept on the server: choose them again.",
                    missing,
                )
                % {"count": missing},
            )
        elif count > MAX_BATCH_FILES:
            self.add_error("file", _("Choose at most %(limit)s files at once.") % {"limit": MAX_BATCH_FILES})
        return data
