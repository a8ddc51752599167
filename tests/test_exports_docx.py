"""``result.docx``: a job's Markdown as a Word document, read back with python-docx."""

from __future__ import annotations

import io

import docx
from django.test import Client

from ocr.models import OcrJob, OcrPage

from .conftest import make_user

PAGE_ONE = """<|ref|>title<|/ref|><|det|>[[40, 30, 960, 80]]<|/det|>
# Annual report

<|ref|>text<|/ref|><|det|>[[40, 100, 960, 200]]<|/det|>
The **first** paragraph, with *emphasis*.
Its second line stays a line.

## Findings

- apples
- pears

1. one
2. two

| Item | Price |
|---|---|
| Tea | 3.50 |
"""
PAGE_TWO = """<table><tr><th>地区</th><th>收入</th></tr><tr><td colspan="2">合计 1200</td></tr></table>

中文段落，没有空格。 bad\x00char\x0b here
"""


def make_job(owner, texts: list[str | None], *, status: str = "done", pages: int | None = None) -> OcrJob:
    job = OcrJob.objects.create(
        owner=owner,
        kind="pdf",
        source="api",
        status=status,
        file_name="report.pdf",
        content_type="application/pdf",
        engine="openai",
        page_count=pages or len(texts),
        pages_done=len([text for text in texts if text]),
    )
    for number, text in enumerate(texts, start=1):
        if text is None:
            OcrPage.objects.create(
                job=job, number=number, status="failed", error_code="engine_error", error_message="The engine failed."
            )
        else:
            OcrPage.objects.create(job=job, number=number, status="done", text=text)
    return job


def download(job: OcrJob, headers: dict[str, str]) -> docx.document.Document:
    response = Client().get(f"/api/jobs/{job.pk}/result.docx", headers=headers)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert 'filename="report.docx"' in response["Content-Disposition"]
    return docx.Document(io.BytesIO(response.content))


def paragraphs(document: docx.document.Document) -> list[tuple[str, str]]:
    return [(paragraph.style.name, paragraph.text) for paragraph in document.paragraphs if paragraph.text]


def test_headings_paragraphs_lists_and_tables_become_word_structure(alice, api):
    document = download(make_job(alice, [PAGE_ONE, PAGE_TWO]), api.headers())
    found = paragraphs(document)

    assert ("Heading 1", "Annual report") in found
    assert ("Heading 2", "Findings") in found
    assert [text for style, text in found if style == "List Bullet"] == ["apples", "pears"]
    assert [text for style, text in found if style == "List Number"] == ["one", "two"]
    body = next(paragraph for paragraph in document.paragraphs if paragraph.text.startswith("The first"))
    assert body.text == "The first paragraph, with emphasis.\nIts second line stays a line."
    assert [run.text for run in body.runs if run.bold] == ["first"]
    assert [run.text for run in body.runs if run.italic] == ["emphasis"]
    pipe, html = document.tables
    assert [[cell.text for cell in row.cells] for row in pipe.rows] == [["Item", "Price"], ["Tea", "3.50"]]
    assert pipe.style.name == "Table Grid"
    assert [cell.text for cell in html.rows[0].cells] == ["地区", "收入"]
    assert [cell.text for cell in html.rows[1].cells] == ["合计 1200", "合计 1200"], "the colspan is one merged cell"


def test_grounding_markup_and_characters_xml_cannot_hold_are_left_out_and_chinese_stays(alice, api):
    document = download(make_job(alice, [PAGE_ONE, PAGE_TWO]), api.headers())
    text = "\n".join(paragraph.text for paragraph in document.paragraphs)

    assert "<|ref|>" not in text and "<|det|>" not in text and "[[40" not in text
    assert "中文段落，没有空格。 badchar here" in text
    east_asian = document.styles["Normal"].element.rPr.rFonts.get(
        "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}eastAsia"
    )
    assert east_asian == "SimSun"


def test_each_page_starts_a_new_page_and_a_page_without_text_says_why(alice, api):
    job = make_job(alice, [PAGE_ONE, None, "Last page."], pages=4)
    document = download(job, api.headers())
    breaks = document.element.body.xml.count('w:type="page"')
    notes = [paragraph.text for paragraph in document.paragraphs if any(run.italic for run in paragraph.runs)]

    assert breaks == 3, "four pages, three page breaks"
    assert "Page 2: The engine failed." in notes
    assert "Page 4 was not read." in notes
    assert document.paragraphs[-1].text == "Page 4 was not read."


def test_the_browser_downloads_it_from_the_job_page_and_only_the_owner_can(alice, api):
    job = make_job(alice, [PAGE_ONE])
    browser = Client()
    browser.force_login(alice)
    html = browser.get(f"/jobs/{job.pk}/").content.decode()
    own = browser.get(f"/jobs/{job.pk}/result.docx")
    stranger = Client()
    stranger.force_login(make_user("mallory"))

    assert f'href="/jobs/{job.pk}/result.docx"' in html
    assert own.status_code == 200 and docx.Document(io.BytesIO(own.content)).paragraphs
    assert stranger.get(f"/jobs/{job.pk}/result.docx").status_code == 404
    assert Client().get(f"/api/jobs/{job.pk}/result.docx").status_code == 401


def test_a_running_job_gives_what_is_read_so_far_like_the_other_formats(alice, api):
    job = make_job(alice, [PAGE_ONE], status="running", pages=3)
    markdown = Client().get(f"/api/jobs/{job.pk}/result.md", headers=api.headers())
    document = download(job, api.headers())

    assert markdown.status_code == 200 and "Annual report" in markdown.content.decode()
    assert ("Heading 1", "Annual report") in paragraphs(document)
    assert [text for _style, text in paragraphs(document)][-2:] == ["Page 2 was not read.", "Page 3 was not read."]
