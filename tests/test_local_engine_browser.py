"""The embedded engine's structure in the formatted view: a real Chromium, a real Daphne, the real RapidOCR models.

A two-column page reads as its paragraphs, column after column; a table arrives as an HTML table; the plain-text
download carries no Markdown.
"""

from __future__ import annotations

import re

import pytest

from testing.documents import accuracy_set

from .conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(module_app_server):
    app = module_app_server({"OCR_ENGINE": "local"}, name="local-browser-server")
    app.register_and_login("erin")
    return app


@pytest.fixture
def page(chromium, server):
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, server, "erin")
    yield page
    context.close()


def read(page, server, name: str) -> None:
    sample = next(item for item in accuracy_set(fast=True) if item.name == name)
    page.goto(f"{server.url}/")
    page.locator("input[type=file]").set_input_files(
        {"name": f"{name}.png", "mimeType": "image/png", "buffer": sample.data}
    )
    page.get_by_role("button", name="Start OCR").click()
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))
    page.wait_for_selector('[data-job-status="done"]', timeout=120_000)


def test_a_two_column_page_reads_column_after_column_in_paragraphs(page, server):
    read(page, server, "two_columns")
    rendered = page.locator("#page-1 .page__rendered")
    assert rendered.locator("h1, h2").first.text_content() == "Annual Report of the River Archive"
    paragraphs = [text.strip() for text in rendered.locator("p").all_text_contents()]
    assert len(paragraphs) == 7  # three paragraphs a column, and the footer
    assert paragraphs[0].startswith("The archive holds letters")
    assert paragraphs[3].startswith("When a page is slightly turned")  # the right column, after the left one
    assert paragraphs[-1] == "Page 4 of 12"

    link = page.get_by_role("link", name=".txt", exact=True).get_attribute("href")
    download = page.request.get(f"{server.url}{link}")
    text = download.text()
    assert text.startswith("Annual Report of the River Archive\n\nThe archive holds letters")
    assert "#" not in text


def test_a_table_renders_as_a_table(page, server):
    read(page, server, "table_unruled")
    table = page.locator("#page-1 .page__rendered table")
    assert table.locator("tr").count() == 6
    assert table.locator("th").all_text_contents() == ["Item", "Shelf", "Count", "Price"]
    assert table.locator("tr").nth(2).locator("td").all_text_contents() == ["Rope, 10 m", "B1", "17", "8.75"]
