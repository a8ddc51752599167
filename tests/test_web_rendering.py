"""OCR text for people: untrusted Markdown rendered safely, grounding markup parsed into boxes."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from ocr.rendering import (
    ALLOWED_TAGS,
    layout_overlays,
    parse_boxes,
    parse_grounding,
    render_markdown,
    render_page,
    strip_grounding,
)

XSS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="alert(1)">',
    "<svg/onload=alert(1)>",
    '<iframe src="javascript:alert(1)"></iframe>',
    "[click](javascript:alert(1))",
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<table><tr><td onmouseover="alert(1)">cell</td></tr></table>',
    '<p style="background:url(javascript:alert(1))">styled</p>',
    "<style>body{display:none}</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<!--<img src=x onerror=alert(1)>-->",
    '<object data="data:text/html,<script>alert(1)</script>"></object>',
    "<form action=//evil><button>go</button></form>",
]


class Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("payload", XSS)
def test_untrusted_html_cannot_run_or_style_anything(payload):
    elements = Elements(render_markdown(payload)).found

    for tag, attrs in elements:
        assert tag in ALLOWED_TAGS
        assert not any(name.startswith("on") or name == "style" for name in attrs)
        assert not (attrs.get("href") or "").strip().lower().startswith(("javascript:", "data:"))


def test_a_page_reading_script_shows_the_characters():
    html = render_markdown("Example: <script>alert('hi')</script> done")

    assert "&lt;script&gt;alert('hi')&lt;/script&gt;" in html


def test_tables_from_the_engine_stay_tables_without_their_handlers():
    html = render_markdown('<table><tr><td colspan="2" onclick="x()">a</td></tr></table>')

    assert '<td colspan="2">a</td>' in html
    assert "onclick" not in html


def test_links_keep_safe_schemes_only_and_get_a_safe_rel():
    html = render_markdown("[site](https://example.com) [mail](mailto:a@b.c) [bad](data:text/html,x)")

    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html
    assert 'href="mailto:a@b.c"' in html
    assert [attrs["href"] for tag, attrs in Elements(html).found if tag == "a"] == [
        "https://example.com",
        "mailto:a@b.c",
    ]


def test_markdown_features_render():
    html = render_markdown("# Title\n\n**bold** _em_ ~~gone~~\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")

    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert "<s>gone</s>" in html and "<td>1</td>" in html


def test_latex_is_shown_verbatim_and_escaped():
    html = render_markdown(r"Load \[ L = \sum_{i=1}^{n} C_i \, Q_i \] and \( x_1 < 2 \)")

    assert r"\[L = \sum_{i=1}^{n} C_i \, Q_i\]" in html
    assert r"\(x_1 &lt; 2\)" in html
    assert "<em>" not in html


def test_grounding_blocks_are_parsed_with_their_boxes_and_text():
    text = (
        "<|ref|>title<|/ref|><|det|>[[180, 40, 820, 70]]<|/det|>\n# Report\n\n"
        "<|ref|>text<|/ref|><|det|>[[80, 100, 920, 160], [80, 170, 500, 190]]<|/det|>\nBody text.\n\n"
    )

    blocks = parse_grounding(text)

    assert [block.label for block in blocks] == ["title", "text"]
    assert blocks[0].boxes == ((180, 40, 820, 70),) and blocks[0].text == "# Report"
    assert blocks[1].boxes == ((80, 100, 920, 160), (80, 170, 500, 190)) and blocks[1].text == "Body text."
    assert strip_grounding(text) == "# Report\n\nBody text."


@pytest.mark.parametrize(
    ("raw", "boxes"),
    [
        ("[[1, 2, 3, 4]]", ((1, 2, 3, 4),)),
        ("[1, 2, 3, 4]", ((1, 2, 3, 4),)),
        ("[[900, 950, 100, 20]]", ((100, 20, 900, 950),)),  # corners in any order
        ("[[-5, 0, 1200, 999.7]]", ((0, 0, 999, 999),)),  # clamped to the 0–999 page
        ("[[1, 2, 3]]", ()),
        ("__import__('os').system('true')", ()),
        ("[[True, 1, 2, 3]]", ()),
        ("not a list", ()),
        ("[[1, 2, 3, 4], 'x', [5, 6, 7, 8]]", ((1, 2, 3, 4), (5, 6, 7, 8))),
    ],
)
def test_box_lists_are_parsed_strictly(raw, boxes):
    assert parse_boxes(raw) == boxes


def test_a_page_with_grounding_gets_one_overlay_per_box_and_clean_markdown():
    rendered = render_page("<|ref|>table<|/ref|><|det|>[[10, 20, 30, 40], [50, 60, 70, 80]]<|/det|>\n<table></table>")

    assert [(o.label, o.x, o.y, o.width, o.height) for o in rendered.overlays] == [
        ("table", 10, 20, 20, 20),
        ("table", 50, 60, 20, 20),
    ]
    assert "<|" not in rendered.markdown and "<|" not in rendered.html


def test_the_embedded_engines_layout_is_drawn_when_there_is_no_grounding():
    layout = [
        {"label": "line", "text": "Hello", "score": 0.99, "box": [10, 10, 200, 40]},
        {"label": "line", "text": "broken", "box": "nope"},
    ]

    rendered = render_page("Hello", layout)

    assert [(o.text, o.box) for o in rendered.overlays] == [("Hello", (10, 10, 200, 40))]
    assert layout_overlays(None) == ()


def test_unknown_labels_get_a_neutral_style():
    rendered = render_page('<|ref|>x" onload="y<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>')

    assert rendered.overlays[0].css_label == "other"


def test_each_grounded_block_is_a_segment_its_boxes_point_at():
    rendered = render_page(
        "<|ref|>title<|/ref|><|det|>[[1, 2, 300, 40]]<|/det|>\n# Hello\n\n"
        "<|ref|>text<|/ref|><|det|>[[1, 50, 300, 90], [1, 100, 300, 120]]<|/det|>\nSome *text*.\n\n"
        "<|ref|>image<|/ref|><|det|>[[1, 130, 300, 400]]<|/det|>\n"
    )

    assert [(s.block, s.label, s.html) for s in rendered.segments] == [
        (0, "title", "<h1>Hello</h1>\n"),
        (1, "text", "<p>Some <em>text</em>.</p>\n"),
    ]
    assert [(o.label, o.block) for o in rendered.overlays] == [("title", 0), ("text", 1), ("text", 1), ("image", 2)]
    assert rendered.html == "".join(segment.html for segment in rendered.segments)


def test_the_embedded_engines_line_boxes_point_at_the_markdown_block_holding_their_text():
    layout = [
        {"label": "text", "text": "Annual Report", "box": [10, 10, 500, 40]},
        {"label": "text", "text": "First line of", "box": [10, 60, 500, 80]},
        {"label": "text", "text": "the paragraph.", "box": [10, 90, 500, 110]},
        {"label": "text", "text": "B1", "box": [10, 130, 100, 150]},
        {"label": "text", "text": "not on the page", "box": [10, 160, 100, 170]},
    ]

    rendered = render_page("# Annual Report\n\nFirst line of\nthe paragraph.\n\n| Shelf |\n|---|\n| B1 |\n", layout)

    assert [(s.block, s.label) for s in rendered.segments] == [(0, "title"), (1, "text"), (2, "table")]
    assert [o.block for o in rendered.overlays] == [0, 1, 1, 2, None]
    assert "<table>" in rendered.segments[2].html


def test_a_page_without_boxes_is_one_segment_linked_to_nothing():
    rendered = render_page("# Title\n\nText.")

    assert [(s.block, s.html) for s in rendered.segments] == [(None, "<h1>Title</h1>\n<p>Text.</p>\n")]
