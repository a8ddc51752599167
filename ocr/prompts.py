"""The one rule for a prompt sent to the engine, whichever door it came through (the API's ``prompt`` field, the
upload form's presets and text)."""

from __future__ import annotations

#: The longest prompt accepted: far more than any OCR instruction needs, and a bound on what a request carries.
MAX_PROMPT_CHARS = 4000


class PromptError(ValueError):
    """A prompt the engine will not be sent; ``reason`` is ``too_long`` or ``not_allowed``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_prompt(prompt: str) -> None:
    """Raise ``PromptError`` for a prompt that is too long or holds a NUL character (which no engine accepts)."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError("too_long", f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
    if "\x00" in prompt:
        raise PromptError("not_allowed", "The prompt contains a NUL character.")
