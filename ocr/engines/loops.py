"""Repetition loops: a page whose text ends in the same phrase, table row, line or dots over and over.

Both DeepSeek-OCR models fall into such loops on some pages and then generate until ``max_tokens`` (the most
reported problem, ``shared/reference/vllm-deepseek-ocr.md`` §4.8). ``LoopDetector`` watches the text as it
streams and says when its tail has become periodic: the last ``min_chars`` characters (or ``MIN_REPEATS`` times
the period, if longer) repeat one unit of at most ``MAX_PERIOD`` characters. The engine then stops the request
instead of paying for thousands of useless tokens, and keeps the text with one copy of the unit.

Cost: the check runs once per ``min_chars // 4`` new characters, and almost always ends at one ``str.rfind`` of
the last few characters in the window before them (text that does not repeat has no earlier occurrence); only
candidate periods found that way are verified, each with one slice comparison. All of it is C-level string work,
so watching a stream costs nothing measurable next to parsing it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest repeated unit looked for (a long table row or a sentence or two).
MAX_PERIOD = 800
#: A unit must repeat at least this often, however long the run of repeats.
MIN_REPEATS = 4
#: The characters at the very end whose earlier occurrences propose the candidate periods.
_PROBE = 24
#: Candidate periods verified per check at most: bounds the cost on text full of short repeats (tables).
_MAX_CANDIDATES = 24


@dataclass(frozen=True, slots=True)
class Loop:
    """A periodic tail: ``text[start:]`` repeats ``text[start:start + period]``."""

    start: int
    period: int
    length: int

    def unit(self, text: str) -> str:
        return text[self.start : self.start + self.period]

    def clean(self, text: str) -> str:
        """``text`` with one copy of the repeated unit kept and the rest of the loop cut."""
        return text[: self.start + self.period]

    def describe(self, text: str) -> str:
        unit = self.unit(text).strip() or repr(self.unit(text))
        if len(unit) > 40:
            unit = unit[:37] + "…"
        return f"“{unit}” repeated {self.length // self.period} times"


def find_loop(text: str, min_chars: int) -> Loop | None:
    """The periodic tail of ``text`` if it is a loop (see the module docstring), else ``None``."""
    size = len(text)
    if min_chars <= 0 or size < min_chars:
        return None
    probe_at = size - _PROBE
    probe = text[probe_at:]
    window_start = max(0, size - MIN_REPEATS * MAX_PERIOD - _PROBE)
    end = size - 1  # an occurrence ending before the last character: period at least 1
    for _ in range(_MAX_CANDIDATES):
        found = text.rfind(probe, window_start, end)
        if found < 0:
            return None
        period = probe_at - found
        if period > MAX_PERIOD:
            return None
        need = max(min_chars, MIN_REPEATS * period)
        if need <= size and text[size - need + period :] == text[size - need : size - period]:
            return _extent(text, period)
        end = found + _PROBE - 1
    return None


def _extent(text: str, period: int) -> Loop:
    """How far back the run of period ``period`` at the end of ``text`` goes.

    The last ``n`` characters are periodic iff ``text[-n:-period] == text[-n + period:]``, and that holds for every
    shorter ``n`` too: gallop, then bisect, with slice comparisons instead of a loop over characters.
    """
    size = len(text)

    def periodic(n: int) -> bool:
        return text[size - n : size - period] == text[size - n + period :]

    low, step = period, period
    while True:
        n = min(size, low + step)
        if not periodic(n):
            high = n - 1
            break
        low = n
        if n == size:
            return Loop(start=0, period=period, length=size)
        step *= 2
    while low < high:
        middle = (low + high + 1) // 2
        if periodic(middle):
            low = middle
        else:
            high = middle - 1
    return Loop(start=size - low, period=period, length=low)


class LoopDetector:
    """Fed the text of one engine request as it streams; ``loop`` is set once its tail is a loop."""

    __slots__ = ("_every", "_pending", "_pending_chars", "_text", "loop", "min_chars")

    def __init__(self, min_chars: int) -> None:
        self.min_chars = min_chars
        self.loop: Loop | None = None
        # Pieces are joined once per check: ``str +=`` on an attribute copies the whole text every time.
        self._text = ""
        self._pending: list[str] = []
        self._pending_chars = 0
        self._every = max(64, min_chars // 4)

    @property
    def text(self) -> str:
        if self._pending:
            self._text += "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
        return self._text

    def feed(self, piece: str) -> Loop | None:
        self._pending.append(piece)
        self._pending_chars += len(piece)
        if self.min_chars and self.loop is None and self._pending_chars >= self._every:
            self.loop = find_loop(self.text, self.min_chars)
        return self.loop

    def finish(self) -> Loop | None:
        """A last look at the whole text (a page that ran to ``max_tokens`` between two checks)."""
        if self.min_chars and self.loop is None:
            self.loop = find_loop(self.text, self.min_chars)
        return self.loop
