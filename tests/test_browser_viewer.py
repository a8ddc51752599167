"""The job viewer in a real browser: zoom, the page list, box ↔ text, per-page copy, progress and cancel.

Debian's Chromium through Playwright, a real Daphne, the fake vLLM engine; at 1280 px in English and at 390 px in
Simplified Chinese. Each step saves a screenshot under ``test-artifacts/screenshots/``. The fake engine is slowed
down by stalls (``stall_after``/``stall_seconds``) so that an intermediate state lasts while it is checked: nothing
waits for a wall-clock time, every wait is Playwright's ``expect``.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from testing.documents import make_numbered_pdf
from testing.servers import ROOT

from .conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
#: (language, viewport width, height): a desktop in English, a phone in Chinese.
SETUPS = [("en", 1280, 900), ("zh-hans", 390, 844)]
STALL = {"stall_after": 1, "stall_seconds": 30.0}  # outlasts every check made while the page is held


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    app = module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            # One page at a time: the engine's requests come in page order, so a script can hold a given page.
            "OCR_PAGE_CONCURRENCY": "1",
            "OCR_PDF_TEXT_LAYER": "ocr",
            "OCR_LIVE_FLUSH_SECONDS": "0.2",
        },
        name="viewer-server",
    )
    app.register_and_login("vera")
    return app


@pytest.fixture(params=SETUPS, ids=[f"{language}-{width}" for language, width, _ in SETUPS])
def setup(request):
    return request.param


@pytest.fixture
def page(chromium, server, setup):
    """A browser page signed in as ``vera``, in the setup's language and size, allowed to use the clipboard."""
    language, width, height = setup
    context = chromium.new_context(
        viewport={"width": width, "height": height},
        locale="en-GB",
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    sign_in(page, server, "vera")
    context.add_cookies([{"name": "django_language", "value": language, "url": server.url}])
    yield page
    context.close()


def shot(page, setup, name: str, *, full_page: bool = True) -> None:
    """A screenshot of the step; of the window only while a modal dialog covers it."""
    language, width, _height = setup
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"viewer-{name}-{language}-{width}.png"), full_page=full_page)


def start_pdf(page, server, pages: int, *, preset: str | None = None) -> None:
    """Upload a numbered PDF through the form and open its job page."""
    page.goto(f"{server.url}/")
    page.locator("input[type=file]").set_input_files(
        {"name": f"book-{pages}.pdf", "mimeType": "application/pdf", "buffer": make_numbered_pdf(pages)}
    )
    expect(page.locator("#preview img").first).to_be_visible()
    if preset:
        page.locator(f"input[name=preset][value={preset}]").check()
    page.locator("form.upload button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))


def pinch(page, element, *, apart: tuple[int, int]) -> None:
    """Two touches on ``element``'s middle, moved from ``apart[0]`` to ``apart[1]`` pixels apart (Chromium's
    DevTools protocol: Playwright has no multi-touch of its own)."""
    box = element.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    session = page.context.new_cdp_session(page)

    def touch(kind: str, distance: float) -> None:
        points = (
            []
            if kind == "touchEnd"
            else [
                {"x": x - distance / 2, "y": y, "id": 1},
                {"x": x + distance / 2, "y": y, "id": 2},
            ]
        )
        session.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", apart[0])
    for step in range(1, 11):
        touch("touchMove", apart[0] + (apart[1] - apart[0]) * step / 10)
    touch("touchEnd", apart[1])
    session.detach()


def wait_done(page) -> None:
    expect(page.locator('[data-job-status="done"]')).to_have_count(1, timeout=60_000)


def page_status(page, number: int):
    """The status badge of a page's entry in the page list."""
    return page.locator(f"#page-link-{number} [data-page-status]")


def test_the_page_image_opens_enlarged_and_zooms_with_buttons_and_keys(page, server, fake, setup):
    fake.set_default(tokens=40, token_delay=0.002)
    start_pdf(page, server, 2)
    wait_done(page)
    link = page.locator("#page-1 a[data-zoom]")
    expect(link.locator("img")).to_be_visible()
    dialog = page.locator("#zoom")
    expect(dialog).to_be_hidden()

    link.focus()
    page.keyboard.press("Enter")  # the image link, from the keyboard
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-zoom-canvas] img")).to_be_visible()
    expect(dialog).to_have_attribute("data-scale", "1")
    fitted = dialog.locator("[data-zoom-canvas]").bounding_box()["width"]
    shot(page, setup, "01-zoom-open", full_page=False)

    page.keyboard.press("+")
    page.keyboard.press("+")
    expect(dialog).to_have_attribute("data-scale", "1.563")
    zoomed = dialog.locator("[data-zoom-canvas]").bounding_box()["width"]
    assert zoomed > fitted * 1.5
    expect(dialog.locator("[data-zoom-level]")).to_have_text("156%")
    shot(page, setup, "02-zoomed-in", full_page=False)

    dialog.locator('[data-zoom-step="out"]').click()
    expect(dialog).to_have_attribute("data-scale", "1.25")
    page.keyboard.press("0")
    expect(dialog).to_have_attribute("data-scale", "1")
    for _ in range(5):
        page.keyboard.press("-")
    expect(dialog).to_have_attribute("data-scale", "0.5")
    expect(dialog.locator('[data-zoom-step="out"]')).to_be_disabled()

    title = dialog.locator("#zoom-title")
    title_one = title.text_content()
    expect(dialog.locator('[data-zoom-turn="-1"]')).to_be_disabled()  # page 1 of 2
    page.keyboard.press("PageDown")
    expect(title).not_to_have_text(title_one)
    expect(dialog.locator("[data-zoom-canvas] img")).to_have_attribute("src", re.compile(r"/pages/2/image$"))
    expect(dialog).to_have_attribute("data-scale", "0.5")  # the zoom stays while the pages turn
    expect(dialog.locator('[data-zoom-turn="1"]')).to_be_disabled()
    dialog.locator('[data-zoom-turn="-1"]').click()
    expect(dialog.locator("[data-zoom-canvas] img")).to_have_attribute("src", re.compile(r"/pages/1/image$"))
    expect(title).to_have_text(title_one)

    stage = dialog.locator("[data-zoom-stage]")
    stage.dblclick()
    expect(dialog).to_have_attribute("data-scale", "2")
    stage.dblclick()
    expect(dialog).to_have_attribute("data-scale", "1")
    pinch(page, stage, apart=(40, 160))  # two fingers spread to four times their distance
    expect(dialog).to_have_attribute("data-scale", re.compile(r"^(3\.[5-9]|4(\.\d+)?)"))
    shot(page, setup, "02b-pinched", full_page=False)

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(link).to_be_focused()  # back where the reader was

    link.click()
    expect(dialog).to_be_visible()
    dialog.locator("[data-zoom-close]").click()
    expect(dialog).to_be_hidden()
    shot(page, setup, "03-zoom-closed")


def test_the_page_list_jumps_to_a_page_and_marks_the_one_in_view(page, server, fake, setup):
    fake.set_default(tokens=40, token_delay=0.002)
    start_pdf(page, server, 5)
    wait_done(page)
    strip = page.locator("nav.strip")
    expect(strip).to_be_visible()
    expect(strip.locator("li")).to_have_count(5)
    for number in range(1, 6):
        expect(page_status(page, number)).to_have_attribute("data-page-status", "done")
    assert page.evaluate("document.documentElement.scrollWidth") <= setup[1], "no sideways scrolling"
    shot(page, setup, "04-page-list")

    page.locator("#page-link-4 a").click()

    expect(page).to_have_url(re.compile(r"#page-4$"))
    expect(page.locator("#page-4 h2")).to_be_in_viewport()
    expect(page.locator("#page-link-4 a")).to_have_attribute("aria-current", "true")
    expect(page.locator("#page-link-1 a")).not_to_have_attribute("aria-current", "true")
    expect(page.locator("#page-link-4 a")).to_be_in_viewport(ratio=1)  # the list follows, at 390 px too
    shot(page, setup, "05-jumped-to-page-4", full_page=False)


def test_hovering_or_focusing_a_box_highlights_its_text_and_the_reverse(page, server, fake, setup):
    fake.set_default(tokens=150, token_delay=0.002)
    start_pdf(page, server, 1, preset="document")
    wait_done(page)
    pane = page.locator("#page-1")
    boxes = pane.locator("svg.boxes g.box[data-block]")
    assert boxes.count() >= 3
    assert pane.locator(".block[data-block]").count() >= 3
    expect(pane.locator(".block[data-label]").first).to_have_attribute("data-label", re.compile(r"\S"))

    box = boxes.nth(1)
    block = box.get_attribute("data-block")
    text = pane.locator(f'.page__rendered .block[data-block="{block}"]')
    other = pane.locator('.page__rendered .block[data-block]:not([data-block="' + block + '"])').first
    box.hover()
    expect(text).to_have_class(re.compile(r"\bis-linked\b"))
    expect(other).not_to_have_class(re.compile(r"\bis-linked\b"))
    shot(page, setup, "06-box-hovered")

    page.mouse.move(0, 0)
    expect(text).not_to_have_class(re.compile(r"\bis-linked\b"))
    text.focus()  # from the keyboard: the text block is focusable
    expect(box).to_have_class(re.compile(r"\bis-linked\b"))
    shot(page, setup, "07-text-focused")

    box.click()  # shows the box's text: focused, so highlighted, and scrolled into view
    expect(text).to_be_focused()
    expect(text).to_be_in_viewport()

    boxes.first.focus()
    first_block = boxes.first.get_attribute("data-block")
    expect(pane.locator(f'.block[data-block="{first_block}"]')).to_have_class(re.compile(r"\bis-linked\b"))
    expect(box).not_to_have_class(re.compile(r"\bis-linked\b"))


def test_copy_puts_one_pages_markdown_on_the_clipboard_and_download_serves_it(page, server, fake, setup):
    fake.push_script({"text": "# First\n\nOne **bold** line."}, {"text": "# Second page\n\nTwo | three"})
    fake.set_default(text="unused", token_delay=0.002)
    start_pdf(page, server, 2)
    wait_done(page)

    copy = page.locator("#page-2 button[data-copy-url]")
    copy.click()
    expect(copy).to_have_text(re.compile("Copied|已复制"))
    assert page.evaluate("navigator.clipboard.readText()") == "# Second page\n\nTwo | three\n"
    shot(page, setup, "08-page-copied")

    download = page.locator("#page-1 a[download][href$='/pages/1.md']")
    response = page.request.get(server.url + download.get_attribute("href"))
    assert response.status == 200 and response.text() == "# First\n\nOne **bold** line.\n"
    assert response.headers["content-disposition"].endswith('.page-1.md"')


def test_the_progress_bar_follows_a_five_page_pdf_page_by_page(page, server, fake, setup):
    # Pages 1 and 2 run through; page 3 is held mid-way, then the rest follow.
    fake.push_script({"tokens": 30}, {"tokens": 30}, {"tokens": 30, **STALL})
    fake.set_default(tokens=30, token_delay=0.002)
    start_pdf(page, server, 5)
    bar = page.locator("#progress progress")
    expect(bar).to_have_attribute("max", "5")

    expect(bar).to_have_attribute("value", "2")
    expect(page.locator("#progress [data-progress-reading]")).to_have_attribute("data-progress-reading", "3")
    expect(page.locator("#progress [data-progress-remaining]")).to_be_visible()  # an estimate, from 2 pages
    expect(page_status(page, 1)).to_have_attribute("data-page-status", "done")
    expect(page_status(page, 3)).to_have_attribute("data-page-status", "running")
    expect(page_status(page, 4)).to_have_attribute("data-page-status", "queued")
    expect(page.locator("#page-3")).to_have_class(re.compile(r"\bpage--running\b"))
    assert page.locator('[data-job-status="running"]').count() == 1
    shot(page, setup, "09-progress-two-of-five")

    page.get_by_role("button", name=re.compile("^(Cancel|取消)$")).click()
    expect(page.locator('[data-job-status="cancelled"]')).to_have_count(1, timeout=30_000)
    expect(bar).to_have_attribute("value", "3")  # pages 1 to 3 ended, 4 and 5 never started
    assert page.locator("#progress [data-progress-remaining]").count() == 0
    shot(page, setup, "10-progress-after-cancel")


def test_a_pdf_that_runs_to_the_end_fills_the_progress_bar(page, server, fake, setup):
    fake.set_default(tokens=30, token_delay=0.01)
    start_pdf(page, server, 5)
    bar = page.locator("#progress progress")
    wait_done(page)
    expect(bar).to_have_attribute("value", "5")
    assert page.locator("#progress [data-progress-reading]").count() == 0
    assert page.locator("#progress [data-progress-remaining]").count() == 0
    for number in range(1, 6):
        expect(page_status(page, number)).to_have_attribute("data-page-status", "done")
    assert page.locator("a[href$='/result.md']").count() == 1
    shot(page, setup, "11-progress-done")


def test_cancel_leaves_every_page_cancelled(page, server, fake, setup):
    fake.push_script({"tokens": 30, "stall_after": 0, "stall_seconds": 30.0})  # page 1 is held before its text
    fake.set_default(tokens=30, token_delay=0.002)
    start_pdf(page, server, 5)
    expect(page_status(page, 1)).to_have_attribute("data-page-status", "running")
    shot(page, setup, "12-before-cancel")

    page.get_by_role("button", name=re.compile("^(Cancel|取消)$")).click()

    expect(page.locator('[data-job-status="cancelled"]')).to_have_count(1, timeout=30_000)
    for number in range(1, 6):
        expect(page_status(page, number)).to_have_attribute("data-page-status", "cancelled")
        expect(page.locator(f"#page-{number}")).to_have_class(re.compile(r"\bpage--cancelled\b"))
    expect(page.get_by_text(re.compile("Cancelling|正在取消"))).to_have_count(0)  # "Cancelling…" went with the job
    assert page.get_by_text(re.compile("Waiting for its turn|No text was found")).count() == 0
    if setup[0] == "en":
        expect(page.locator("#page-link-5 [data-page-status]")).to_have_text("Cancelled")
    shot(page, setup, "13-cancelled")

    page.reload()  # the stored state says the same
    for number in range(1, 6):
        expect(page_status(page, number)).to_have_attribute("data-page-status", "cancelled")
    assert page.locator("a[href$='/result.md']").count() == 0, "no download without text"


@pytest.fixture(scope="module")
def local_server(module_app_server):
    """The embedded engine, reading born-digital PDF pages from their text layer: line boxes, no model needed."""
    app = module_app_server({"OCR_ENGINE": "local", "OCR_PDF_TEXT_LAYER": "auto"}, name="viewer-local-server")
    app.register_and_login("vera")
    return app


def test_the_embedded_engines_line_boxes_are_linked_to_their_text_too(chromium, local_server):
    setup = ("en", 1280, 900)
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        sign_in(page, local_server, "vera")
        start_pdf(page, local_server, 2)
        wait_done(page)
        pane = page.locator("#page-1")
        boxes = pane.locator("svg.boxes g.box[data-block]")
        assert boxes.count() >= 4  # one a line
        assert pane.locator(".page__rendered .block[data-block]").count() >= 1

        box = boxes.nth(2)
        block = box.get_attribute("data-block")
        text = pane.locator(f'.page__rendered .block[data-block="{block}"]')
        box.hover()
        expect(text).to_have_class(re.compile(r"\bis-linked\b"))
        assert box.locator("title").text_content().split(":", 1)[1].strip() in text.text_content()
        shot(page, setup, "14-embedded-engine-box-hovered")

        page.mouse.move(0, 0)
        text.hover()
        linked = pane.locator(f'svg.boxes g.box.is-linked[data-block="{block}"]')
        expect(linked).to_have_count(pane.locator(f'svg.boxes g.box[data-block="{block}"]').count())
        assert linked.count() >= 1
    finally:
        context.close()


def test_without_javascript_the_page_list_and_image_links_still_work(chromium, server, fake):
    setup = ("en", 1280, 900)
    fake.set_default(tokens=30, token_delay=0.002)
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB", java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        sign_in(page, server, "vera")
        page.locator("input[type=file]").set_input_files(
            {"name": "plain.pdf", "mimeType": "application/pdf", "buffer": make_numbered_pdf(3)}
        )
        page.locator("form.upload button[type=submit]").click()
        page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))
        job_url = page.url
        wait_done(page)  # the page refreshes itself while the job runs (a <noscript> refresh)

        assert page.locator("button[data-copy-url]").first.is_hidden()  # Copy needs JavaScript
        assert page.locator("#page-2 a[download][href$='/pages/2.md']").is_visible()
        page.locator("#page-link-3 a").click()
        expect(page).to_have_url(job_url + "#page-3")
        expect(page.locator("#page-3 h2")).to_be_in_viewport()
        shot(page, setup, "15-without-javascript")
        image = page.locator("#page-1 a[data-zoom]")
        assert image.get_attribute("href").endswith("/pages/1/image")
        image.click()
        page.wait_for_url(re.compile(r".*/pages/1/image$"))  # the image itself, at its own size
    finally:
        context.close()
