"""Character error rate (CER) between OCR output and known ground truth.

Both sides are normalised the same way before they are compared, as in
``reference/embedded-ocr.md``: NFKC, whitespace collapsed to single spaces, and no space between two CJK
characters (an engine that splits Chinese into words, or a line break inside Chinese text, costs nothing).
"""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz.distance import Levenshtein

__all__ = ["cer", "is_cjk", "normalise"]

# Scripts written without spaces between words, plus their punctuation. Hangul is left out on purpose:
# Korean puts spaces between words, so they are real characters there.
_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」…)
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms (what NFKC leaves of them)
    (0x20000, 0x3134F),  # CJK unified ideographs extensions B to G, compatibility supplement
)
_WHITESPACE = re.compile(r"\s+")


def is_cjk(char: str) -> bool:
    """Whether a single character belongs to a script written without spaces between words."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def normalise(text: str) -> str:
    """Return ``text`` in the form CER is counted on.

    NFKC-normalises (full-width Latin letters and digits become ASCII, so do full-width ``，``, ``：``,
    ``（`` and ``）``; ``。`` and ``、`` stay), collapses every run of whitespace, line breaks included,
    into one space, strips both ends, and removes a space that has a CJK character on both sides.
    Spaces between a CJK character and a Latin one are kept.
    """
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if " " not in text:
        return text
    kept = [
        char
        for i, char in enumerate(text)
        if not (char == " " and is_cjk(text[i - 1]) and is_cjk(text[i + 1]))  # a space is never at an end
    ]
    return "".join(kept)


def cer(hypothesis: str, reference: str, *, ignore_space: bool = False) -> float:
    """Character error rate of ``hypothesis`` against ``reference``.

    Both are passed through :func:`normalise`; with ``ignore_space`` every space is then removed as well
    (the "CER-ns" of the reference note). The result is the Levenshtein distance (insertions, deletions
    and substitutions all cost 1) divided by the length of the normalised reference, so it is 0.0 for a
    perfect read and can exceed 1.0 when the hypothesis is much longer than the reference. An empty
    reference gives 0.0 against an empty hypothesis and 1.0 against anything else.
    """
    hyp, ref = normalise(hypothesis), normalise(reference)
    if ignore_space:
        hyp, ref = hyp.replace(" ", ""), ref.replace(" ", "")
    if not ref:
        return 0.0 if not hyp else 1.0
    return Levenshtein.distance(hyp, ref) / len(ref)
