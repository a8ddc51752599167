"""Deterministic DeepSeek-OCR-like output for the fake vLLM server, and the fake's "tokenizer".

The fake needs text that looks like what DeepSeek-OCR emits for a scanned report page: a
Markdown title, numbered section headings, paragraphs, HTML tables, LaTeX equations and,
when the prompt asks for grounding, layout blocks of the form

    <|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>\\n<content>\\n\\n

with box coordinates normalised to 0-999. The text is generated from a fixed seed, so the
same request always yields the same output, and it deliberately contains characters that
exercise JSON escaping and UTF-8 handling (quotes, backslashes, "µg/L", "°C", em dashes).

The fake tokenizer splits text into pieces of at most four non-space characters, each
carrying the whitespace that precedes it, and keeps the grounding special tokens whole, so
``"".join(tokenize(text)) == text`` always holds.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Iterator

REF_OPEN = "<|ref|>"
REF_CLOSE = "<|/ref|>"
DET_OPEN = "<|det|>"
DET_CLOSE = "<|/det|>"
GROUNDING = "<|grounding|>"

#: Tokens that vLLM drops from the output text when ``skip_special_tokens`` is true.
SPECIAL_TOKENS: frozenset[str] = frozenset({REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE, GROUNDING})

_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS)) + ")")
_PIECE = re.compile(r"\s*\S{1,4}|\s+")
_LOCATE = re.compile(r"Locate\s*<\|ref\|>(.*?)<\|/ref\|>", re.DOTALL)

_SEED = 20240501

_TITLE = "Regional Water Quality Report 2024"
_TOPICS = (
    "Sampling Network",
    "Nutrient Loads",
    "Dissolved Oxygen",
    "Heavy Metals",
    "Microbial Indicators",
    "Sediment Transport",
    "Temperature Trends",
    "Groundwater Interaction",
)
_SITES = ("North Creek", "Mill Pond", "Alder Ford", "Harbour Inlet", "Quarry Lake", "Stone Bridge")
_SENTENCES = (
    "Samples were collected monthly at {site} between March and October.",
    'The field team recorded a mean nitrate concentration of {value} mg/L at "{site}".',
    "Dissolved oxygen fell below {value} mg/L during the August heatwave.",
    "Lead remained under the detection limit of {small} µg/L in every sample.",
    "Water temperature peaked at {temp} °C on 14 July, two degrees above the ten-year mean.",
    "Turbidity rose sharply after storms — up to {big} NTU at {site}.",
    "Results were compared with the 2019 baseline using a paired t-test (p < 0.05).",
    "Conductivity at {site} averaged {big}0 µS/cm, consistent with previous years.",
    "E. coli counts exceeded the bathing-water threshold on {small} occasions.",
    "The upstream reference site showed no significant change in phosphorus.",
    "Flow-weighted loads were estimated with the ratio method described in Annex B.",
    "Two samplers at {site} failed in June; those weeks are excluded from the totals.",
)
_EQUATIONS = (
    r"\[ L = \sum_{i=1}^{n} C_i \, Q_i \, \Delta t \]",
    r"\[ \mathrm{DO}_{\%} = \frac{\mathrm{DO}}{\mathrm{DO}_{sat}(T)} \times 100 \]",
    r"\( \bar{x} \pm 1.96 \, s / \sqrt{n} \)",
)
_TABLE_HEADER = ("Site", "pH", "Nitrate (mg/L)", "DO (mg/L)")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into fake tokens; joining the result gives ``text`` back exactly.

    Grounding special tokens are single tokens; everything else becomes pieces of up to
    four non-whitespace characters with their leading whitespace (a trailing run of
    whitespace is its own token).
    """
    tokens: list[str] = []
    for segment in _SPECIAL_SPLIT.split(text):
        if not segment:
            continue
        if segment in SPECIAL_TOKENS:
            tokens.append(segment)
        else:
            tokens.extend(_PIECE.findall(segment))
    return tokens


def visible(token: str, skip_special_tokens: bool) -> str:
    """Text a token contributes to the output, as vLLM's detokenizer would emit it."""
    if skip_special_tokens and token in SPECIAL_TOKENS:
        return ""
    return token


def _blocks(rng: random.Random) -> Iterator[tuple[str, str]]:
    """Yield ``(label, content)`` layout blocks of an endless report, deterministically."""
    yield "title", f"# {_TITLE}"
    yield "text", _paragraph(rng)
    section = 0
    while True:
        section += 1
        topic = _TOPICS[(section - 1) % len(_TOPICS)]
        yield "sub_title", f"## {section}. {topic}"
        for _ in range(rng.randint(1, 2)):
            yield "text", _paragraph(rng)
        if section % 2 == 1:
            yield "table", _table(rng)
        if section % 3 == 0:
            yield "image", ""
            yield "text", f"Figure {section}: {topic.lower()} at {rng.choice(_SITES)}, 2024."
        if section % 4 == 2:
            yield "equation", rng.choice(_EQUATIONS)


def _paragraph(rng: random.Random) -> str:
    sentences = [
        template.format(
            site=rng.choice(_SITES),
            value=f"{rng.uniform(2, 9):.1f}",
            small=rng.randint(2, 9),
            big=rng.randint(40, 180),
            temp=f"{rng.uniform(18, 27):.1f}",
        )
        for template in rng.sample(_SENTENCES, rng.randint(3, 5))
    ]
    return " ".join(sentences)


def _table(rng: random.Random) -> str:
    rows = ["<table><tr>" + "".join(f"<td>{h}</td>" for h in _TABLE_HEADER) + "</tr>"]
    for site in rng.sample(_SITES, 3):
        cells = (
            site,
            f"{rng.uniform(6.5, 8.5):.1f}",
            f"{rng.uniform(0.5, 4):.2f}",
            f"{rng.uniform(5, 11):.1f}",
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows) + "</table>"


def _box(label: str, content: str, top: int) -> tuple[int, int, int, int]:
    """A plausible 0-999 box for a block whose top edge is at ``top``."""
    if label == "title":
        return 180, top, 820, top + 30
    if label == "sub_title":
        return 80, top, 520, top + 18
    if label == "image":
        return 150, top, 850, top + 220
    if label == "equation":
        return 300, top, 700, top + 28
    if label == "table":
        rows = content.count("<tr>")
        return 80, top, 920, top + 20 * rows + 8
    lines = max(1, -(-len(content) // 95))
    return 80, top, 920, top + 14 * lines + 4


def _block_texts(grounded: bool) -> Iterator[str]:
    """The report as text blocks, with grounding markup and 0-999 boxes if ``grounded``."""
    top = 40
    for label, content in _blocks(random.Random(_SEED)):
        if not grounded:
            if content:
                yield f"{content}\n\n"
            continue
        x1, y1, x2, y2 = _box(label, content, top)
        if y2 > 975:
            # Continue on a fresh page so coordinates stay within 0-999.
            x1, y1, x2, y2 = _box(label, content, 40)
        top = y2 + 12
        yield f"{REF_OPEN}{label}{REF_CLOSE}{DET_OPEN}[[{x1}, {y1}, {x2}, {y2}]]{DET_CLOSE}\n{content}\n\n"


def _document(grounded: bool, min_tokens: int) -> list[str]:
    parts: list[str] = []
    rough = 0
    for block in _block_texts(grounded):
        parts.append(block)
        rough += len(block) // 4
        if rough >= min_tokens:
            # Tokenize the whole text, not block by block, so that re-tokenizing the output
            # gives the same tokens (whitespace merges across block boundaries).
            tokens = tokenize("".join(parts))
            if len(tokens) >= min_tokens:
                return tokens
    raise AssertionError("unreachable: the report is endless")


@functools.lru_cache(maxsize=16)
def _document_cached(grounded: bool, size_class: int) -> tuple[str, ...]:
    return tuple(_document(grounded, 1 << size_class))


def document_tokens(count: int, *, grounded: bool) -> tuple[str, ...]:
    """The first ``count`` tokens of the sample report (with grounding markup if ``grounded``)."""
    if count <= 0:
        return ()
    return _document_cached(grounded, max(6, (count - 1).bit_length()))[:count]


def locate_phrase(prompt: str) -> str | None:
    """The phrase of a ``Locate <|ref|>phrase<|/ref|> in the image.`` prompt, if any."""
    match = _LOCATE.search(prompt)
    return match.group(1) if match else None


def locate_tokens(phrase: str) -> tuple[str, ...]:
    """Tokens of a grounding answer for ``phrase``: the ref plus one to three boxes."""
    digest = hashlib.sha256(phrase.encode()).digest()
    boxes = []
    for i in range(1 + digest[0] % 3):
        x1, y1 = digest[1 + 4 * i] * 3, digest[2 + 4 * i] * 3
        w, h = 40 + digest[3 + 4 * i], 12 + digest[4 + 4 * i] // 4
        boxes.append(f"[{x1}, {y1}, {min(999, x1 + w)}, {min(999, y1 + h)}]")
    text = f"{REF_OPEN}{phrase}{REF_CLOSE}{DET_OPEN}[{', '.join(boxes)}]{DET_CLOSE}"
    return tuple(tokenize(text))
