"""OCR text for people: grounding markup parsed into boxes, Markdown rendered to sanitised HTML.

OCR output is untrusted input: a page that reads ``<script>`` must show those characters, never run them. Markdown
is rendered with markdown-it-py (raw HTML allowed, because DeepSeek-OCR writes tables as HTML) and the result goes
through nh3 with a short allow-list: no scripts, no event handlers, no ``style`` attributes, no images (they would
load remote URLs named by the document), and only http(s)/mailto links.

DeepSeek-OCR's grounding output (``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>``, coordinates
normalised to 0–999) is parsed with a strict pattern and ``ast.literal_eval``; the markup is removed from the
Markdown view and the boxes are drawn over the page image.

The HTML comes in segments that the viewer links to the boxes (``Segment.block`` = ``Overlay.block``): one per
grounded block, or, for the embedded engine's line boxes, one per top-level Markdown block, each line box pointing at
the block its text is found in. The downloads use the whole Markdown, never the segments.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, replace
from typing import Any

import nh3
from markdown_it import MarkdownIt

Box = tuple[int, int, int, int]

GROUNDING = re.compile(r"<\|ref\|>(?P<label>.*?)<\|/ref\|><\|det\|>(?P<boxes>.*?)<\|/det\|>", re.DOTALL)
# Special tokens that can reach the text when vLLM keeps special tokens (``skip_special_tokens: false``).
SPECIAL_TOKENS = re.compile(r"<\|grounding\|>|<｜end▁of▁sentence｜>|<\|/?(?:ref|det)\|>")
MATH = re.compile(r"\\\[(?P<display>.+?)\\\]|\\\((?P<inline>.+?)\\\)", re.DOTALL)
MAX_BOXES_PER_BLOCK = 100
#: Labels with their own colour in the stylesheet; any other label is drawn as "other".
KNOWN_LABELS = frozenset({"title", "sub_title", "text", "table", "image", "equation", "figure", "caption", "line"})

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "mark", "ol", "p", "pre", "s", "small",
    "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
    "col": {"span"},
    "colgroup": {"span"},
}
ALLOWED_CLASSES = {"span": {"math", "math-inline"}, "div": {"math", "math-display"}}

# Raw HTML the engine legitimately writes (tables, a few inline tags). Any other tag is shown as text, so that a page
# reading "<script>" displays exactly that instead of vanishing in the sanitiser.
PASS_THROUGH_TAGS = ALLOWED_TAGS | {"center"}
HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)\b")

_markdown = MarkdownIt("commonmark", {"html": True, "breaks": False}).enable(["table", "strikethrough"])


@dataclass(frozen=True, slots=True)
class Block:
    """One grounded block: its label, its boxes (0–999) and the text that follows it up to the next block."""

    label: str
    boxes: tuple[Box, ...]
    text: str = ""

    @property
    def css_label(self) -> str:
        return self.label if self.label in KNOWN_LABELS else "other"

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "boxes": [list(box) for box in self.boxes], "text": self.text}


@dataclass(frozen=True, slots=True)
class Overlay:
    """Boxes to draw over one page image, in 0–999 coordinates."""

    label: str
    box: Box
    text: str = ""
    #: The index of the text segment this box belongs to (``Segment.block``), when it is known.
    block: int | None = None

    @property
    def css_label(self) -> str:
        return self.label if self.label in KNOWN_LABELS else "other"

    @property
    def x(self) -> int:
        return self.box[0]

    @property
    def y(self) -> int:
        return self.box[1]

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a page's HTML that some boxes point at (``block``, shared with their ``Overlay.block``), or,
    with ``block`` ``None``, text no box covers. ``label`` is the engine's (or, for the embedded engine's line
    boxes, the Markdown's: ``title``, ``table``) kind of block."""

    html: str
    block: int | None = None
    label: str = ""

    @property
    def css_label(self) -> str:
        return self.label if self.label in KNOWN_LABELS else "other"


@dataclass(frozen=True, slots=True)
class RenderedPage:
    html: str
    markdown: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)
    overlays: tuple[Overlay, ...] = field(default_factory=tuple)
    #: The HTML in pieces that the viewer links to the boxes; joined, they are ``html``.
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def plain(self) -> str:
        """The page as plain text (the ``.txt`` download): the Markdown without its markup."""
        return plain_text(self.markdown)


def parse_boxes(raw: str) -> tuple[Box, ...]:
    """The boxes of a ``<|det|>`` payload: ``[[x1, y1, x2, y2], ...]`` or a single ``[x1, y1, x2, y2]``.

    Anything that is not a list of four numbers is ignored; coordinates are clamped to 0–999 and ordered so that
    ``x1 <= x2`` and ``y1 <= y2``.
    """
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ()
    if isinstance(value, list | tuple) and len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, list | tuple):
        return ()
    boxes: list[Box] = []
    for item in value[:MAX_BOXES_PER_BLOCK]:
        if not (isinstance(item, list | tuple) and len(item) == 4 and all(_is_number(v) for v in item)):
            continue
        x1, y1, x2, y2 = (min(999, max(0, int(v))) for v in item)
        boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return tuple(boxes)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_grounding(text: str) -> tuple[Block, ...]:
    """The grounded blocks of ``text``, each with the text up to the next block (markup removed)."""
    matches = list(GROUNDING.finditer(text))
    blocks = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        content = SPECIAL_TOKENS.sub("", text[match.end() : end]).strip()
        blocks.append(Block(label=match.group("label").strip(), boxes=parse_boxes(match.group("boxes")), text=content))
    return tuple(blocks)


def strip_grounding(text: str) -> str:
    """``text`` without grounding spans and special tokens, blank-line runs collapsed (as DeepSeek's own tools)."""
    cleaned = SPECIAL_TOKENS.sub("", GROUNDING.sub("", text))
    cleaned = re.sub(r"\n{3,}", "\n\n", cleaned)
    return cleaned.strip("\n")


def layout_overlays(layout: object) -> tuple[Overlay, ...]:
    """Overlays for the embedded engine's stored line boxes (``{"label", "text", "score", "box"}``, 0–999)."""
    if not isinstance(layout, list):
        return ()
    overlays = []
    for item in layout:
        if not isinstance(item, dict):
            continue
        boxes = parse_boxes(repr(item.get("box"))) if isinstance(item.get("box"), list) else ()
        if boxes:
            label = str(item.get("label") or "line")[:60]
            overlays.append(Overlay(label=label, box=boxes[0], text=str(item.get("text") or "")[:500]))
    return tuple(overlays)


def markdown_tokens(markdown: str) -> list[Any]:
    """The token stream of ``markdown`` with the viewer's parser (CommonMark, raw HTML, tables): for exports."""
    return _markdown.parse(markdown)


def render_markdown(markdown: str) -> str:
    """Markdown (with raw HTML tables) → HTML that is safe to insert into a page."""
    stash: list[str] = []

    def keep_math(match: re.Match[str]) -> str:
        # CommonMark would eat the backslashes of \[ … \] and \( … \) and read _ as emphasis: set LaTeX aside and
        # show it verbatim.
        display = match.group("display") is not None
        body = match.group("display") if display else match.group("inline")
        stash.append(_math_html(body.strip(), display=display))
        return f"\x02{len(stash) - 1}\x03"

    protected = MATH.sub(keep_math, markdown.replace("\x02", "").replace("\x03", ""))
    protected = HTML_TAG.sub(_escape_unknown_tag, protected)
    html = _markdown.render(protected)
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        allowed_classes=ALLOWED_CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    if stash:
        clean = re.sub(r"\x02(\d+)\x03", lambda m: stash[int(m.group(1))], clean)
    return clean


_TABLE_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_TABLE_ROW_END = re.compile(r"</tr\s*>|<br\s*/?>", re.IGNORECASE)
_BLOCK_END = re.compile(r"</(?:p|div|h[1-6]|li|table|caption)\s*>", re.IGNORECASE)


def plain_text(markdown: str) -> str:
    """Markdown → plain text: headings, emphasis, escapes and list/table markup removed, one line per table row
    (cells separated by two spaces), a blank line between blocks, soft line breaks kept as line breaks.

    Raw HTML (DeepSeek-OCR writes tables as HTML) keeps only its text, with the same row and cell breaks.
    """
    lines: list[str] = []
    row: list[str] | None = None
    cell: list[str] = []
    list_depth = 0
    for token in _markdown.parse(markdown):
        kind = token.type
        if kind in {"paragraph_close", "heading_close", "code_block", "fence", "hr", "table_close"}:
            if kind in {"code_block", "fence"}:
                lines.append(token.content.rstrip("\n"))
            if list_depth and kind == "paragraph_close":
                continue
            lines.append("")
        elif kind in {"bullet_list_close", "ordered_list_close"}:
            list_depth -= 1
            if not list_depth:
                lines.append("")
        elif kind in {"bullet_list_open", "ordered_list_open"}:
            list_depth += 1
        elif kind == "list_item_open":
            lines.append("- " if token.markup in "-*+" else token.info + token.markup + " ")
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            lines.append("  ".join(row))
            row = None
        elif kind in {"th_open", "td_open"}:
            cell = []
        elif kind in {"th_close", "td_close"} and row is not None:
            row.append("".join(cell).strip())
        elif kind == "html_block":
            html = _BLOCK_END.sub("\n\n", _TABLE_ROW_END.sub("\n", _TABLE_CELL_END.sub("  ", token.content)))
            text = nh3.clean(html, tags=set())
            lines.append(_unescape_html(text).strip("\n"))
            lines.append("")
        elif kind == "inline":
            text = _inline_text(token)
            if row is not None:
                cell.append(text)
            elif lines and lines[-1].endswith(" ") and list_depth:
                lines[-1] += text
            else:
                lines.append(text)
    text = "\n".join(line.rstrip() for line in "\n".join(lines).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _inline_text(token: Any) -> str:
    parts = []
    for child in token.children or ():
        if child.type in {"text", "code_inline"}:
            parts.append(child.content)
        elif child.type in {"softbreak", "hardbreak"}:
            parts.append("\n")
        elif child.type == "html_inline":
            parts.append(_unescape_html(nh3.clean(child.content, tags=set())))
    return "".join(parts)


def _unescape_html(text: str) -> str:
    import html

    return html.unescape(text)


def _escape_unknown_tag(match: re.Match[str]) -> str:
    if match.group(2).lower() in PASS_THROUGH_TAGS:
        return match.group(0)
    return "&lt;" + match.group(0)[1:]


def _math_html(latex: str, *, display: bool) -> str:
    escaped = latex.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if display:
        return f'<span class="math math-display">\\[{escaped}\\]</span>'
    return f'<span class="math math-inline">\\({escaped}\\)</span>'


def render_page(text: str, layout: object = None) -> RenderedPage:
    """Everything the page view needs from one page's stored text and layout.

    The HTML is rendered in segments so that the viewer can link each box to its text: one per grounded block
    (DeepSeek-OCR), or one per top-level Markdown block that the embedded engine's line boxes are found in.
    """
    blocks = parse_grounding(text)
    markdown = strip_grounding(text)
    if blocks:
        overlays = tuple(
            Overlay(label=block.label, box=box, text=block.text[:500], block=index)
            for index, block in enumerate(blocks)
            for box in block.boxes
        )
        segments = _grounded_segments(text, blocks)
    else:
        overlays = layout_overlays(layout)
        if overlays:
            segments, overlays = _layout_segments(markdown, overlays)
        else:
            segments = (Segment(html=render_markdown(markdown)),) if markdown else ()
    return RenderedPage(
        html="".join(segment.html for segment in segments),
        markdown=markdown,
        blocks=blocks,
        overlays=overlays,
        segments=segments,
    )


def _grounded_segments(text: str, blocks: tuple[Block, ...]) -> tuple[Segment, ...]:
    first = GROUNDING.search(text)
    preamble = SPECIAL_TOKENS.sub("", text[: first.start()]).strip() if first else ""
    segments = [Segment(html=render_markdown(preamble))] if preamble else []
    segments.extend(
        Segment(html=render_markdown(block.text), block=index, label=block.label)
        for index, block in enumerate(blocks)
        if block.text
    )
    return tuple(segments)


_BLANKS = re.compile(r"\s+")


def _layout_segments(markdown: str, overlays: tuple[Overlay, ...]) -> tuple[tuple[Segment, ...], tuple[Overlay, ...]]:
    """The Markdown's top-level blocks as segments, and each line box linked to the block holding its text
    (searched in reading order, from the block the previous line was found in)."""
    lines = markdown.split("\n")
    chunks: list[tuple[str, str]] = []
    for token in _markdown.parse(markdown):
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        start, end = token.map
        kind = token.type
        label = "title" if kind == "heading_open" else "table" if kind == "table_open" else "text"
        if kind == "html_block" and "<table" in token.content.lower():
            label = "table"
        chunks.append(("\n".join(lines[start:end]), label))
    if not chunks:
        return (), overlays
    haystacks = [_BLANKS.sub("", plain_text(chunk)) for chunk, _label in chunks]
    linked = []
    current = 0
    for overlay in overlays:
        needle = _BLANKS.sub("", overlay.text)
        order = [*range(current, len(chunks)), *range(current)]
        found = next((index for index in order if needle and needle in haystacks[index]), None)
        if found is not None:
            current = found
            overlay = replace(overlay, block=found)
        linked.append(overlay)
    segments = tuple(
        Segment(html=render_markdown(chunk), block=index, label=label) for index, (chunk, label) in enumerate(chunks)
    )
    return segments, tuple(linked)
