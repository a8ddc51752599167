"""Reading order and structure for the embedded engine, from the line boxes alone.

RapidOCR returns one box per text line (or per piece of a line, when the gap between words is wide), with no
notion of columns, paragraphs or tables. This module puts them in the order a person reads them and turns the
result into Markdown:

1. **Skew.** The page's skew is the median angle of the top edges of the long boxes. Every box is turned back by
   that angle, so lines of a scan rotated a few degrees are flat again and do not overlap their neighbours' bands.
2. **Order** is a recursive XY-cut over the deskewed boxes: the region is split into horizontal bands at the
   empty rows between them; consecutive bands that share an empty vertical gutter form a group; a group whose
   parts on both sides of a gutter are prose (long lines) is read column by column, anything else (tables,
   forms, receipts: short cells aligned in rows) row by row, left to right. Each column is cut again the same way.
   Headers and footers are bands of their own, so they stay where they are. Left to right is the only direction.
3. **Structure**: a blank line between paragraphs (a larger gap than the block's line pitch, a first-line
   indent, a change of line height), headings from line height, bullets as Markdown lists, and groups of aligned
   short cells as Markdown tables. CJK lines of one paragraph are joined without a space.

Everything works on plain ``(x, y)`` quads, so the order is known before any line is recognised (the engine then
recognises and streams lines in that order).
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

Quad = Sequence[Sequence[float]]

#: Skews below this (degrees) are left alone: turning boxes by a rounding error changes nothing.
MIN_SKEW_DEGREES = 0.2
#: A column's lines must be this many line heights long (median) for the column to count as prose.
PROSE_WIDTH_IN_HEIGHTS = 5.0
#: A gutter between columns is at least this many line heights wide.
GUTTER_IN_HEIGHTS = 0.8
#: Consecutive lines of running text are at most this many line heights apart (centre to centre).
LINE_PITCH_IN_HEIGHTS = 1.9
#: A vertical gap wider than this many line heights ends a group of columns (a footer below them stands alone).
BLOCK_GAP_IN_HEIGHTS = 3.0
#: A heading is a short row at least this much taller than the page's body text.
HEADING_RATIO = 1.2
H1_RATIO = 1.6
_BULLET = re.compile(r"^\s*(?:[•·●▪◦‣∙]\s*|[*\-–]\s+)")
_ORDERED = re.compile(r"^\s*\(?\d{1,3}[.)]\s+")


@dataclass(slots=True)
class Box:
    """One detected line in deskewed page coordinates; ``index`` is its position in the input."""

    index: int
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    # The central part of the box, for band membership: detection boxes are padded ("unclipped") and the
    # boxes of closely set lines touch; their cores do not.
    @property
    def core_top(self) -> float:
        return self.cy - 0.3 * self.height

    @property
    def core_bottom(self) -> float:
        return self.cy + 0.3 * self.height


@dataclass(slots=True)
class Block:
    """A run of rows read in order. ``kind`` is "text" (each row a line) or "table" (``columns[r][k]`` is the
    column of cell ``k`` of row ``r``). Rows hold input indices, left to right."""

    kind: str
    rows: list[list[int]] = field(default_factory=list)
    columns: list[list[int]] = field(default_factory=list)
    n_columns: int = 0


@dataclass(slots=True)
class Layout:
    skew_degrees: float
    boxes: list[Box]
    blocks: list[Block]

    @property
    def order(self) -> list[int]:
        """Input indices in reading order."""
        return [index for block in self.blocks for row in block.rows for index in row]


# ------------------------------------------------------------------------------------------------ geometry


def estimate_skew(quads: Sequence[Quad]) -> float:
    """The page's skew in degrees (positive: lines fall to the right, y pointing down), from the top edges of
    the long boxes; 0.0 when too few boxes are long enough to tell."""
    angles = []
    for quad in quads:
        (x0, y0), (x1, y1) = quad[0][:2], quad[1][:2]
        (x3, y3) = quad[3][:2]
        length = math.hypot(x1 - x0, y1 - y0)
        height = math.hypot(x3 - x0, y3 - y0)
        if length >= 3 * max(height, 1.0) and x1 > x0:
            angles.append(math.degrees(math.atan2(y1 - y0, x1 - x0)))
    if not angles:
        return 0.0
    angle = statistics.median(angles)
    if abs(angle) < MIN_SKEW_DEGREES or abs(angle) > 30:
        return 0.0
    return angle


def deskewed_boxes(quads: Sequence[Quad], skew_degrees: float) -> list[Box]:
    """Axis-aligned boxes of the quads turned back by ``skew_degrees`` (about the origin: only relative
    positions matter)."""
    angle = math.radians(skew_degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    boxes = []
    for index, quad in enumerate(quads):
        xs = [x * cos + y * sin for x, y in (point[:2] for point in quad)]
        ys = [-x * sin + y * cos for x, y in (point[:2] for point in quad)]
        boxes.append(Box(index, min(xs), min(ys), max(xs), max(ys)))
    return boxes


# ------------------------------------------------------------------------------------------------ ordering


def analyse(quads: Sequence[Quad]) -> Layout:
    """The reading order and block structure of a page's detected lines."""
    skew = estimate_skew(quads)
    boxes = deskewed_boxes(quads, skew)
    if not boxes:
        return Layout(skew, boxes, [])
    unit = statistics.median(box.height for box in boxes) or 1.0
    blocks: list[Block] = []
    _cut(boxes, unit, blocks)
    return Layout(skew, boxes, blocks)


def _bands(boxes: list[Box]) -> list[list[Box]]:
    """Split into horizontal bands at the rows no box core crosses, top to bottom."""
    bands: list[list[Box]] = []
    bottom = -math.inf
    for box in sorted(boxes, key=lambda item: item.core_top):
        if bands and box.core_top <= bottom:
            bands[-1].append(box)
            bottom = max(bottom, box.core_bottom)
        else:
            bands.append([box])
            bottom = box.core_bottom
    return bands


def _top(band: list[Box]) -> float:
    return min(box.y1 for box in band)


def _bottom(band: list[Box]) -> float:
    return max(box.y2 for box in band)


def _gutters(boxes: list[Box], min_gap: float) -> list[float]:
    """x positions (gap centres) of the empty vertical strips at least ``min_gap`` wide between the boxes."""
    gutters = []
    # Specks (both sides under half a line height: dirt, a stray dot) do not close a gutter.
    unit = min_gap / GUTTER_IN_HEIGHTS
    spans = sorted((box.x1, box.x2) for box in boxes if box.width >= unit / 2 or box.height >= unit / 2)
    if not spans:
        return []
    right = spans[0][1]
    for x1, x2 in spans[1:]:
        if x1 - right >= min_gap:
            gutters.append((x1 + right) / 2)
        right = max(right, x2)
    return gutters


def _split_at(boxes: list[Box], gutters: list[float]) -> list[list[Box]]:
    parts: list[list[Box]] = [[] for _ in range(len(gutters) + 1)]
    for box in boxes:
        parts[sum(1 for gutter in gutters if box.x1 > gutter)].append(box)
    return parts


def _is_prose(part: list[Box], unit: float) -> bool:
    """Long lines, several of them: a column of running text rather than a column of table cells."""
    bands = _bands(part)
    if len(bands) < 2:
        return False
    # Running text has consecutive lines at a line's pitch; a form's fields, however long, stand further apart.
    centres = [statistics.median(box.cy for box in band) for band in bands]
    if not any(b - a <= LINE_PITCH_IN_HEIGHTS * unit for a, b in itertools.pairwise(centres)):
        return False
    widths = [box.width for box in part]
    return statistics.median(widths) >= PROSE_WIDTH_IN_HEIGHTS * unit


def _cut(boxes: list[Box], unit: float, blocks: list[Block]) -> None:
    """Append the blocks of ``boxes`` in reading order (the recursive XY-cut)."""
    bands = _bands(boxes)
    min_gap = GUTTER_IN_HEIGHTS * unit
    index = 0
    while index < len(bands):
        group = list(bands[index])
        end = index + 1
        # Grow the group while the bands still share an empty vertical strip: a line that crosses every gutter
        # (a title, a full-width paragraph) ends it, and so does a band that has more gutters of its own than
        # it shares with the group (a table's first row under a title that covers some of its gutters).
        while end < len(bands) and _top(bands[end]) - _bottom(bands[end - 1]) <= BLOCK_GAP_IN_HEIGHTS * unit:
            shared = _gutters([*group, *bands[end]], min_gap)
            if not shared or len(shared) < len(_gutters(bands[end], min_gap)):
                break
            group.extend(bands[end])
            end += 1
        _read_group(group, bands[index:end], unit, min_gap, blocks)
        index = end


def _sticks_out(box: Box, rest: list[Box], unit: float, min_gap: float) -> bool:
    """Whether a lone box above or below a grid reaches out of the grid's column it stands in (a caption, a
    centred subtitle) rather than being a cell of that column."""
    gutters = _gutters(rest, min_gap)
    if not gutters:
        return True
    parts = [part for part in _split_at(rest, gutters) if part]
    part = max(parts, key=lambda p: min(box.x2, max(b.x2 for b in p)) - max(box.x1, min(b.x1 for b in p)))
    return box.x1 < min(b.x1 for b in part) - unit or box.x2 > max(b.x2 for b in part) + unit


def _text_rows(bands: list[list[Box]], blocks: list[Block]) -> None:
    if not blocks or blocks[-1].kind != "text":
        blocks.append(Block("text"))
    for band in bands:
        blocks[-1].rows.append([box.index for box in sorted(band, key=lambda box: box.x1)])


def _read_group(group: list[Box], bands: list[list[Box]], unit: float, min_gap: float, blocks: list[Block]) -> None:
    gutters = _gutters(group, min_gap) if len(bands) > 1 else []
    if gutters and len(bands) > 2:
        # A lone line at the top or bottom of a grid that does not fit its columns is text beside the grid.
        for edge in (0, -1):
            if len(bands[edge]) == 1:
                rest = [box for band in (bands[1:] if edge == 0 else bands[:-1]) for box in band]
                if _sticks_out(bands[edge][0], rest, unit, min_gap):
                    inner = bands[1:] if edge == 0 else bands[:-1]
                    if edge == 0:
                        _text_rows(bands[:1], blocks)
                    _read_group(rest, inner, unit, min_gap, blocks)
                    if edge == -1:
                        _text_rows(bands[-1:], blocks)
                    return
    if gutters:
        parts = _split_at(group, gutters)
        # Cut only at gutters with prose on both sides: a table's or a form's columns are read row by row.
        prose = [_is_prose(part, unit) for part in parts]
        column_gutters = [gutter for k, gutter in enumerate(gutters) if prose[k] and prose[k + 1]]
        if column_gutters:
            for part in _split_at(group, column_gutters):
                if part:
                    blocks.append(Block("text"))  # a column starts a block of its own
                    _cut(part, unit, blocks)
            return
        rows = [sorted(band, key=lambda box: box.x1) for band in bands]
        columns = [[sum(1 for gutter in gutters if box.x1 > gutter) for box in row] for row in rows]
        blocks.append(
            Block(
                "table",
                rows=[[box.index for box in row] for row in rows],
                columns=columns,
                n_columns=len(gutters) + 1,
            )
        )
        return
    _text_rows(bands, blocks)


# ---------------------------------------------------------------------------------------------- structure


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x2E80 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF or code >= 0x20000


def join_pieces(left: str, right: str, separator: str = " ") -> str:
    """Join two pieces of text; nothing between them when both sides are CJK."""
    if not left:
        return right
    if not right:
        return left
    if _is_cjk(left[-1]) and _is_cjk(right[0]):
        return left + right
    return left + separator + right


_MARKDOWN_START = re.compile(r"^(\s*)([#>+=]|\d{1,9}[.)](\s|$)|[-*_]\s|[-*_]{3,}|`{3,}|~{3,})")


def _escape_line(text: str) -> str:
    """Keep OCR text from being read as Markdown block syntax (a line that starts with "#" or "1.")."""
    text = text.replace("\\", "\\\\")
    for char in "*_`[]":
        text = text.replace(char, "\\" + char)
    match = _MARKDOWN_START.match(text)
    if match:
        start = len(match.group(1))
        if text[start].isdigit():  # "1999. A good year": escape the dot, a backslash before a digit is literal
            start = start + len(match.group(2).rstrip()) - 1
        text = text[:start] + "\\" + text[start:]
    return text


def _escape_cell(text: str) -> str:
    return _escape_line(text).replace("|", "\\|")


@dataclass(slots=True)
class _Row:
    text: str
    x1: float
    y1: float
    y2: float
    height: float


def to_markdown(layout: Layout, texts: Sequence[str]) -> str:
    """The page as Markdown: ``texts[i]`` is the recognised text of input line ``i`` (empty: dropped)."""
    boxes = {box.index: box for box in layout.boxes}
    # The body's line height over the whole page, table cells included: a title above a table is a heading.
    heights = [boxes[i].height for block in layout.blocks for row in block.rows for i in row if texts[i].strip()]
    body = statistics.median(heights) if heights else 1.0
    parts: list[str] = []
    for block in layout.blocks:
        if block.kind == "table":
            table = _table_markdown(block, texts)
            if table:
                parts.append(table)
            continue
        rows = []
        for row in block.rows:
            pieces = [texts[i].strip() for i in row if texts[i].strip()]
            if not pieces:
                continue
            text = pieces[0]
            for piece in pieces[1:]:
                text = join_pieces(text, piece)
            members = [boxes[i] for i in row if texts[i].strip()]
            rows.append(
                _Row(
                    text,
                    min(b.x1 for b in members),
                    min(b.y1 for b in members),
                    max(b.y2 for b in members),
                    statistics.median(b.height for b in members),
                )
            )
        parts.extend(_paragraphs(rows, body))
    return "\n\n".join(part for part in parts if part)


def _paragraphs(rows: list[_Row], body: float) -> list[str]:
    if not rows:
        return []
    pitches = [b.y1 - a.y1 for a, b in itertools.pairwise(rows) if b.y1 > a.y1]
    pitch = statistics.median(pitches) if pitches else body * 2
    left = min(row.x1 for row in rows)
    out: list[str] = []
    current: list[_Row] = []

    def flush() -> None:
        if not current:
            return
        text = ""
        for row in current:
            line = _escape_line(row.text)
            # Inside a paragraph a line break is a soft break (a space in the formatted view); CJK lines join.
            text = join_pieces(text, line, "\n")
        out.append(text)
        current.clear()

    for number, row in enumerate(rows):
        # Detection boxes are padded by a constant, so a heading in twice the body's type is only about 1.5 to
        # 1.7 times as tall; a sentence ending in a full stop is large print, not a heading.
        heading = row.height >= HEADING_RATIO * body and len(row.text) <= 120 and row.text[-1] not in ".,;:。，；："
        bullet = _BULLET.match(row.text) if len(row.text) > 2 else None
        ordered = _ORDERED.match(row.text)
        if heading:
            flush()
            level = 1 if row.height >= H1_RATIO * body else 2
            out.append("#" * level + " " + _escape_line(row.text))
            continue
        if bullet or ordered:
            flush()
            if bullet:
                item = "- " + _escape_line(row.text[bullet.end() :])
            else:
                marker = ordered.group(0).strip().strip("()")
                item = marker.rstrip(".)") + ". " + _escape_line(row.text[ordered.end() :])
            # Consecutive items form one list: no blank line between them.
            if out and number and (_BULLET.match(rows[number - 1].text) or _ORDERED.match(rows[number - 1].text)):
                out[-1] += "\n" + item
            else:
                out.append(item)
            continue
        if current:
            previous = current[-1]
            gap = row.y1 - previous.y1
            indented = row.x1 - left > 1.5 * body and previous.x1 - left <= 1.5 * body
            blank = row.y1 - previous.y2 > body  # a line's height of white: never one paragraph
            if gap > 1.45 * pitch or blank or indented or abs(row.height - previous.height) > 0.35 * body:
                flush()
        current.append(row)
    flush()
    return out


def _table_markdown(block: Block, texts: Sequence[str]) -> str:
    cells: list[list[str]] = []
    for row, columns in zip(block.rows, block.columns, strict=True):
        line = [""] * block.n_columns
        for index, column in zip(row, columns, strict=True):
            text = texts[index].strip()
            if text:
                line[column] = join_pieces(line[column], text)
        if any(line):
            cells.append(line)
    if not cells:
        return ""
    # Drop columns no row uses (a gutter found inside one oversized cell).
    used = [k for k in range(block.n_columns) if any(line[k] for line in cells)]
    cells = [[line[k] for k in used] for line in cells]
    if len(used) < 2 or len(cells) < 2:
        return "\n".join(" ".join(_escape_line(cell) for cell in line if cell) for line in cells)
    lines = ["| " + " | ".join(_escape_cell(cell) for cell in cells[0]) + " |"]
    lines.append("|" + "---|" * len(used))
    lines.extend("| " + " | ".join(_escape_cell(cell) for cell in line) + " |" for line in cells[1:])
    return "\n".join(lines)


def plain_order(layout: Layout, texts: Sequence[str]) -> str:
    """The page as plain lines in reading order (the text streamed before the structure is known)."""
    lines = []
    for block in layout.blocks:
        for row in block.rows:
            text = ""
            for index in row:
                text = join_pieces(text, texts[index].strip())
            if text:
                lines.append(text)
    return "\n".join(lines)
