"""A job's result as a Word document (``result.docx``), built with python-docx from each page's Markdown.

The Markdown is the one the other downloads use (``ocr.rendering.render_page``: grounding markup removed), parsed
with the same Markdown parser as the result viewer, so a heading, a list or a table is the same thing in every
format: headings become Heading 1–6, paragraphs keep their line breaks, lists take Word's list styles, pipe
tables and the HTML tables DeepSeek-OCR writes become Word tables ("Table Grid"), ``**bold**`` and ``*italic*``
stay so. Figures are skipped (the page image is not embedded). Each page starts on a new page; a page with no
text says why. OCR output is untrusted: python-docx escapes the XML, and characters XML cannot hold are dropped.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import nh3
from docx import Document
from docx.enum.text import WD_BREAK
from docx.oxml.ns import qn
from docx.shared import Pt
from docx.text.paragraph import Paragraph

from ocr.rendering import markdown_tokens

#: Characters XML 1.0 cannot hold (python-docx refuses them): C0 controls but tab and newlines, and U+FFFE/FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
#: A font with CJK glyphs for East Asian text, the one Word and LibreOffice pick for Chinese when it is named.
EAST_ASIAN_FONT = "SimSun"


@dataclass(frozen=True, slots=True)
class DocxPage:
    number: int
    markdown: str
    #: Said in italics instead of the text when the page has none (failed, cancelled, never read).
    note: str = ""


def xml_safe(text: str) -> str:
    return _NOT_XML.sub("", text)


def build_docx(pages: Iterable[DocxPage], *, title: str = "") -> bytes:
    """The Word document of ``pages``, in order, one page of the job per page of the document."""
    document = Document()
    normal = document.styles["Normal"]
    fonts = normal.element.get_or_add_rPr().get_or_add_rFonts()
    fonts.set(qn("w:eastAsia"), EAST_ASIAN_FONT)
    if title:
        document.core_properties.title = xml_safe(title)[:200]
    first = True
    for page in pages:
        if not first:
            document.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
        first = False
        if page.markdown.strip():
            _add_markdown(document, xml_safe(page.markdown))
        elif page.note:
            document.add_paragraph().add_run(xml_safe(page.note)).italic = True
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# --- Markdown tokens → document ---------------------------------------------------------------------------------


def _add_markdown(document: Any, markdown: str) -> None:
    tokens = markdown_tokens(markdown)
    lists: list[str] = []  # "bullet" or "number", innermost last
    table: list[list[str]] | None = None
    row: list[str] | None = None
    heading = 0
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            heading = int(token.tag[1])
        elif kind == "heading_close":
            heading = 0
        elif kind in ("bullet_list_open", "ordered_list_open"):
            lists.append("bullet" if kind == "bullet_list_open" else "number")
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "table_open":
            table = []
        elif kind == "table_close" and table is not None:
            _add_table(document, table)
            table = None
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and table is not None and row is not None:
            table.append(row)
            row = None
        elif kind == "inline":
            if row is not None:
                row.append(_inline_plain(token))
            elif heading:
                document.add_heading(_inline_plain(token), level=heading)
            else:
                style = None
                if lists:
                    depth = "" if len(lists) == 1 else f" {min(len(lists), 3)}"
                    style = ("List Bullet" if lists[-1] == "bullet" else "List Number") + depth
                _add_runs(document.add_paragraph(style=style), token.children or [])
        elif kind in ("fence", "code_block"):
            paragraph = document.add_paragraph()
            run = paragraph.add_run(token.content.rstrip("\n"))
            run.font.name = "Courier New"
            run.font.size = Pt(9)
        elif kind == "html_block":
            _add_html_block(document, token.content)


def _add_runs(paragraph: Paragraph, children: list[Any]) -> None:
    bold = italic = strike = False
    for child in children:
        kind = child.type
        if kind == "strong_open":
            bold = True
        elif kind == "strong_close":
            bold = False
        elif kind == "em_open":
            italic = True
        elif kind == "em_close":
            italic = False
        elif kind == "s_open":
            strike = True
        elif kind == "s_close":
            strike = False
        elif kind in ("softbreak", "hardbreak"):
            # A line break inside a paragraph carries meaning in OCR output (an address, a verse): keep it.
            paragraph.add_run().add_break()
        elif kind in ("text", "code_inline"):
            run = paragraph.add_run(child.content)
            run.bold, run.italic = bold or None, italic or None
            if strike:
                run.font.strike = True
            if kind == "code_inline":
                run.font.name = "Courier New"
        elif kind == "html_inline":
            continue  # a tag of its own (<sup>, <br>): its text, if any, is a text child
        elif kind == "image":
            continue  # figures are not embedded


def _inline_plain(token: Any) -> str:
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts).strip()


def _add_table(document: Any, rows: list[list[str]], spans: list[list[int]] | None = None) -> None:
    """A Word table of ``rows`` (cell texts); ``spans`` gives each cell's column span (1 by default)."""
    spans = spans or [[1] * len(row) for row in rows]
    width = max((sum(row_spans) for row_spans in spans), default=0)
    if not rows or not width:
        return
    table = document.add_table(rows=len(rows), cols=width)
    table.style = "Table Grid"
    for row_index, (row, row_spans) in enumerate(zip(rows, spans, strict=True)):
        column = 0
        for text, span in zip(row, row_spans, strict=True):
            if column >= width:
                break
            cell = table.cell(row_index, column)
            last = min(width, column + span) - 1
            if last > column:
                cell = cell.merge(table.cell(row_index, last))
            cell.text = text
            column = last + 1
    document.add_paragraph()  # Word joins two tables that touch


# --- HTML (DeepSeek-OCR's tables) -----------------------------------------------------------------------------


@dataclass(slots=True)
class _HtmlTable:
    rows: list[list[str]] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)


class _TableParser(HTMLParser):
    """The tables of an HTML block (cell texts and column spans) and the text outside them, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[_HtmlTable | str] = []
        self._table: _HtmlTable | None = None
        self._cell: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and self._table is None:
            self._flush_text()
            self._table = _HtmlTable()
        elif self._table is not None and tag == "tr":
            self._table.rows.append([])
            self._table.spans.append([])
        elif self._table is not None and tag in ("td", "th"):
            if not self._table.rows:
                self._table.rows.append([])
                self._table.spans.append([])
            span = dict(attrs).get("colspan") or "1"
            self._table.spans[-1].append(max(1, min(int(span), 64)) if span.isdigit() else 1)
            self._table.rows[-1].append("")
            self._cell = []
        elif tag == "br":
            (self._cell if self._cell is not None else self._text).append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._table is not None and tag in ("td", "th") and self._cell is not None:
            self._table.rows[-1][-1] = "".join(self._cell).strip()
            self._cell = None
        elif tag == "table" and self._table is not None:
            self.parts.append(self._table)
            self._table = None
        elif tag in ("p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li") and self._table is None:
            self._flush_text()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._table is None:
            self._text.append(data)

    def _flush_text(self) -> None:
        text = "".join(self._text).strip()
        if text:
            self.parts.append(text)
        self._text = []

    def close(self) -> None:
        super().close()
        if self._table is not None:  # an unclosed table still counts
            self.parts.append(self._table)
            self._table = None
        self._flush_text()


def _add_html_block(document: Any, raw: str) -> None:
    parser = _TableParser()
    # Only the tags that carry structure survive; everything else keeps its text.
    parser.feed(
        nh3.clean(
            raw,
            tags={"table", "thead", "tbody", "tr", "td", "th", "br", "p", "div"},
            attributes={"td": {"colspan"}, "th": {"colspan"}},
        )
    )
    parser.close()
    for part in parser.parts:
        if isinstance(part, _HtmlTable):
            _add_table(document, part.rows, part.spans)
        else:
            document.add_paragraph(html.unescape(part))
