"""Reading order and structure from line boxes alone (ocr.engines.layout), and Markdown back to plain text.

The boxes are built by hand, as RapidOCR's detector reports them (4-point quads, clockwise from top-left), so
every case states exactly the geometry it is about.
"""

from __future__ import annotations

import math

import pytest

from ocr.engines.layout import analyse, estimate_skew, join_pieces, to_markdown
from ocr.rendering import plain_text, render_markdown


def quad(x: float, y: float, width: float, height: float = 30.0, angle: float = 0.0) -> list[tuple[float, float]]:
    """A line box whose top-left corner is at (x, y), turned ``angle`` degrees about that corner (y down)."""
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    return [(x + cx * cos - cy * sin, y + cx * sin + cy * cos) for cx, cy in corners]


def test_two_columns_are_read_one_after_the_other_not_line_by_line():
    # Both columns' lines sit at the same heights, which is what made row grouping interleave them.
    quads, names = [quad(60, 20, 700, 50)], ["title"]
    for row in range(6):
        quads += [quad(60, 100 + 45 * row, 420), quad(540, 100 + 45 * row, 420)]
        names += [f"L{row}", f"R{row}"]
    quads.append(quad(60, 1200, 200, 24))
    names.append("footer")
    order = [names[i] for i in analyse(quads).order]
    assert order == ["title", *(f"L{r}" for r in range(6)), *(f"R{r}" for r in range(6)), "footer"]


def test_a_speck_in_the_gutter_does_not_join_the_columns():
    quads, names = [], []
    for row in range(5):
        quads += [quad(60, 100 + 45 * row, 420), quad(540, 100 + 45 * row, 420)]
        names += [f"L{row}", f"R{row}"]
    quads.append(quad(500, 190, 8, 8))  # a dot of dirt between the columns
    names.append("speck")
    order = [names[i] for i in analyse(quads).order]
    order.remove("speck")
    assert order == [*(f"L{r}" for r in range(5)), *(f"R{r}" for r in range(5))]


def test_three_columns_with_a_shorter_last_column():
    quads, names = [], []
    for column, rows in enumerate((5, 5, 3)):
        for row in range(rows):
            quads.append(quad(50 + 400 * column, 100 + 45 * row, 340))
            names.append(f"{column}.{row}")
    order = [names[i] for i in analyse(quads).order]
    assert order == [f"{c}.{r}" for c, rows in enumerate((5, 5, 3)) for r in range(rows)]


@pytest.mark.parametrize("angle", [-5.0, -2.0, 2.0, 5.0])
def test_skewed_lines_keep_their_own_rows(angle):
    # Lines 1000 px long turned 5° span 87 px vertically, more than the 45 px between them: unturned, their
    # bounding boxes overlap their neighbours'.
    a = math.radians(angle)
    quads = [quad(100 - 45 * row * math.sin(a), 100 + 45 * row * math.cos(a), 1000, 30, angle) for row in range(8)]
    layout = analyse(quads)
    assert layout.skew_degrees == pytest.approx(angle, abs=0.05)
    assert layout.order == list(range(8))
    assert [len(row) for block in layout.blocks for row in block.rows] == [1] * 8


def test_skew_is_zero_without_long_lines():
    assert estimate_skew([quad(10, 10, 40, 30, 10.0), quad(100, 10, 50, 30, 10.0)]) == 0.0


def test_a_table_is_read_row_by_row_and_written_as_a_markdown_table():
    cells = [["Item", "Shelf", "Price"], ["Lamp oil", "A3", "3.20"], ["Rope", "B1", "8.75"]]
    quads, texts = [], []
    for row, values in enumerate(cells):
        for column, value in enumerate(values):
            quads.append(quad(80 + 300 * column, 100 + 70 * row, 30 + 14 * len(value)))
            texts.append(value)
    layout = analyse(quads)
    assert [texts[i] for i in layout.order] == [value for row in cells for value in row]
    markdown = to_markdown(layout, texts)
    assert markdown.splitlines() == [
        "| Item | Shelf | Price |",
        "|---|---|---|",
        "| Lamp oil | A3 | 3.20 |",
        "| Rope | B1 | 8.75 |",
    ]
    html = render_markdown(markdown)
    assert "<table>" in html
    assert "<td>Lamp oil</td>" in html


def test_a_title_over_a_table_is_a_heading_and_not_a_row_of_it():
    # The title is long enough to cover the gutter between the first two columns, but not the others.
    quads, texts = [quad(70, 40, 480, 40)], ["Stock levels at the end of March"]
    for row, values in enumerate([["Item", "Shelf", "Count"], ["Lamp oil", "A3", "42"], ["Rope", "B1", "17"]]):
        for x, value in zip((90, 400, 650), values, strict=True):
            quads.append(quad(x, 150 + 70 * row, 20 + 14 * len(value)))
            texts.append(value)
    markdown = to_markdown(analyse(quads), texts)
    assert markdown.splitlines()[:4] == [
        "## Stock levels at the end of March",
        "",
        "| Item | Shelf | Count |",
        "|---|---|---|",
    ]


def test_a_centred_line_over_a_receipt_stays_text():
    quads = [quad(200, 90, 240, 28)]
    texts = ["12 Mill Lane, Riverside"]
    for row, (name, price) in enumerate([("Bread", "2.40"), ("Milk 2 L", "1.85"), ("Coffee beans", "7.95")]):
        quads += [quad(60, 170 + 60 * row, 14 * len(name)), quad(520, 170 + 60 * row, 60)]
        texts += [name, price]
    markdown = to_markdown(analyse(quads), texts)
    assert markdown.startswith("12 Mill Lane, Riverside\n\n| Bread | 2.40 |\n|---|---|\n| Milk 2 L | 1.85 |")


def test_form_fields_side_by_side_are_read_row_by_row():
    # Long label-value pairs in two columns, far apart vertically: a form, not two columns of text.
    quads, names = [], []
    for row in range(4):
        quads += [quad(80, 160 + 90 * row, 420), quad(600, 160 + 90 * row, 420)]
        names += [f"left{row}", f"right{row}"]
    order = [names[i] for i in analyse(quads).order]
    assert order == [name for row in range(4) for name in (f"left{row}", f"right{row}")]


def test_paragraphs_headings_and_lists_become_markdown():
    quads = [
        quad(60, 20, 600, 56),  # a heading: twice the body's height
        quad(60, 110, 900),
        quad(60, 155, 900),
        quad(60, 200, 500),
        quad(60, 300, 900),  # a wider gap: a new paragraph
        quad(60, 345, 700),
        quad(60, 440, 300),
        quad(60, 485, 300),
    ]
    texts = [
        "Notes on the records",
        "The archive holds letters",
        "and maps from three centuries",
        "of trade.",
        "Volunteers scan each page",
        "before it is read.",
        "• first point",
        "• second point",
    ]
    markdown = to_markdown(analyse(quads), texts)
    assert markdown == (
        "# Notes on the records\n\n"
        "The archive holds letters\nand maps from three centuries\nof trade.\n\n"
        "Volunteers scan each page\nbefore it is read.\n\n"
        "- first point\n- second point"
    )
    html = render_markdown(markdown)
    assert "<h1>Notes on the records</h1>" in html
    assert html.count("<p>") == 2
    assert "<li>second point</li>" in html


def test_chinese_lines_of_a_paragraph_join_without_a_space():
    quads = [quad(60, 100, 900), quad(60, 145, 900)]
    markdown = to_markdown(analyse(quads), ["光学字符识别是把图片中的文字", "转换成文本的技术。"])
    assert markdown == "光学字符识别是把图片中的文字转换成文本的技术。"
    assert join_pieces("Report", "报告") == "Report 报告"


def test_ocr_text_that_looks_like_markdown_stays_text():
    quads = [quad(60, 100, 600), quad(60, 300, 600), quad(60, 500, 600)]
    texts = ["# not a heading", "1999. A good year", "*starred* and _under_"]
    markdown = to_markdown(analyse(quads), texts)
    html = render_markdown(markdown)
    assert "<h1>" not in html
    assert "<ol" not in html
    assert "<em>" not in html
    assert plain_text(markdown).split("\n\n") == texts


def test_plain_text_drops_markup_and_keeps_lines():
    markdown = "# Title\n\nfirst line\nsecond line\n\n- a\n- b\n\n| A | B |\n|---|---|\n| 1 | 2 |"
    assert plain_text(markdown) == "Title\n\nfirst line\nsecond line\n\n- a\n- b\n\nA  B\n1  2"


def test_plain_text_of_an_html_table_keeps_rows_and_cells():
    assert plain_text("<table><tr><td>x</td><td>y</td></tr><tr><td>1</td><td>2</td></tr></table>") == "x  y\n1  2"
