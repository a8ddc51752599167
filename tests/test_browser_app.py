"""The web app in a real browser: Debian's Chromium driven by Playwright, a real Daphne, the fake vLLM engine.

Each step saves a screenshot under ``test-artifacts/screenshots/`` for people to look at.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import ROOT

from .conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    app = module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            "OCR_PAGE_CONCURRENCY": "4",
            "OCR_LIVE_FLUSH_SECONDS": "0.2",
        },
        name="browser-server",
    )
    app.register_and_login("dana")
    return app


@pytest.fixture
def signed_in(page, server):
    """A browser page signed in as ``dana`` through the login form."""
    page.set_default_timeout(20_000)
    sign_in(page, server, "dana")
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def upload(page, server, name: str, data: bytes, mime: str, *, preset: str | None = None) -> None:
    page.goto(f"{server.url}/")
    page.locator("input[type=file]").set_input_files({"name": name, "mimeType": mime, "buffer": data})
    assert image_loaded(page.locator("#preview img").first)  # a data: image, rendered on the server
    if preset:
        page.locator(f"input[name=preset][value={preset}]").check()
    return None


def image_loaded(image) -> bool:
    """Whether the image (scrolled into view, as lazy images load only there) decodes to real pixels."""
    image.scroll_into_view_if_needed()
    return image.evaluate("img => img.decode().then(() => img.naturalWidth > 0, () => false)")


def start(page, server) -> None:
    page.get_by_role("button", name="Start OCR").click()
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))


def wait_done(page) -> None:
    page.wait_for_selector('[data-job-status="done"]', timeout=30_000)


def test_upload_an_image_and_watch_the_text_stream_in(signed_in, server, fake):
    page = signed_in
    fake.set_default(tokens=120, token_delay=0.03)
    upload(page, server, "page.png", SAMPLES["short"].render(), "image/png", preset="markdown")
    shot(page, "01-upload-with-preview")
    start(page, server)

    # An intermediate state: text is on the page while the job is still running.
    expect(page.locator("#raw-1")).to_have_text(re.compile(r"[\s\S]{20,}"))
    assert page.locator("[data-job-status]").get_attribute("data-job-status") == "running"
    running_text = page.locator("#raw-1").text_content()
    shot(page, "02-image-streaming")

    wait_done(page)
    assert page.locator("#page-1 .page__rendered h1").first.text_content().startswith("Regional Water Quality")
    final_text = page.locator("#raw-1").text_content()
    assert final_text.startswith(running_text.rstrip()[:20]) and len(final_text) > len(running_text)
    usage = page.locator("#usage")
    assert int(usage.locator("dd").nth(2).text_content()) > 0  # completion tokens
    assert usage.locator("dd").nth(0).text_content().strip() == "1 / 1"
    assert page.get_by_role("link", name="Download .md").is_visible()
    shot(page, "03-image-done-rendered")

    page.get_by_text("Raw text").click()
    assert page.locator("#page-1 .page__raw").is_visible()
    assert not page.locator("#page-1 .page__rendered").is_visible()
    shot(page, "04-image-raw-view")


def test_reloading_a_running_job_replays_then_follows_without_running_the_engine_again(signed_in, server, fake):
    page = signed_in
    fake.set_default(tokens=150, token_delay=0.02)
    upload(page, server, "reload.png", SAMPLES["short"].render(), "image/png")
    start(page, server)
    expect(page.locator("#raw-1")).to_have_text(re.compile(r"[\s\S]{30,}"))

    page.reload()  # a new page load, a new EventSource: the stored text first, then the live rest

    expect(page.locator("#raw-1")).to_have_text(re.compile(r"[\s\S]{30,}"))
    wait_done(page)
    stored = page.request.get(page.url + "result.json").json()["pages_detail"][0]["text"]
    assert page.locator("#raw-1").text_content() == stored  # nothing lost, nothing twice
    assert fake.stats["requests"] == 1


def test_a_three_page_pdf_fills_three_panes(signed_in, server, fake):
    page = signed_in
    fake.set_default(tokens=60, token_delay=0.03)
    upload(page, server, "three.pdf", make_numbered_pdf(3), "application/pdf")
    assert page.locator("#preview img").count() == 3
    start(page, server)

    assert page.locator("article.page").count() == 3
    page.locator(".page--running").nth(1).wait_for()  # pages run in parallel
    shot(page, "05-pdf-pages-running")
    wait_done(page)
    assert page.locator("article.page--done").count() == 3
    for number in (1, 2, 3):
        assert page.locator(f"#page-{number} .page__rendered").text_content().strip()
        assert image_loaded(page.locator(f"#page-{number} img"))
    shot(page, "06-pdf-done")


def test_history_reopens_a_job(signed_in, server, fake):
    page = signed_in
    fake.set_default(text="Kept for later: **bold** words.", token_delay=0.01)
    upload(page, server, "later.png", SAMPLES["short"].render(), "image/png")
    start(page, server)
    wait_done(page)

    page.get_by_role("link", name="History").first.click()
    page.wait_for_url(f"{server.url}/jobs/")
    shot(page, "07-history")
    page.get_by_role("link", name="later.png").first.click()

    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))
    assert page.locator("#page-1 .page__rendered strong").text_content() == "bold"
    shot(page, "08-history-reopened")


def test_an_xss_payload_in_the_ocr_output_is_shown_as_text(signed_in, server, fake):
    page = signed_in
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    payload = (
        "# Invoice\n\n<script>window.__xss = 1; alert('xss')</script>\n\n"
        '<img src=x onerror="window.__xss = 2; alert(2)">\n\n<a href="javascript:alert(3)">click</a>\n'
    )
    fake.set_default(text=payload, token_delay=0.005)
    upload(page, server, "evil.png", SAMPLES["short"].render(), "image/png")
    start(page, server)
    wait_done(page)

    rendered = page.locator("#page-1 .page__rendered")
    assert "<script>window.__xss = 1; alert('xss')</script>" in rendered.text_content()
    assert page.evaluate("window.__xss") is None
    rendered.get_by_text("click").click()
    assert dialogs == []
    assert page.locator("#page-1 .page__rendered script, #page-1 .page__rendered img").count() == 0
    shot(page, "09-xss-shown-as-text")


def test_a_grounding_result_draws_boxes_over_the_page(signed_in, server, fake):
    page = signed_in
    fake.set_default(tokens=150, token_delay=0.005)
    upload(page, server, "report.png", SAMPLES["english"].render(), "image/png", preset="document")
    start(page, server)
    wait_done(page)

    boxes = page.locator("#page-1 svg.boxes g.box")
    assert boxes.count() >= 3
    assert "<|ref|>" not in page.locator("#page-1 .page__rendered").text_content()
    assert page.locator("#page-1 svg.boxes g.box title").first.text_content().startswith("title")
    boxes.first.hover()
    shot(page, "10-grounding-boxes")


def test_the_interface_speaks_chinese(signed_in, server):
    page = signed_in
    page.get_by_role("button", name="简体中文").click()
    page.wait_for_load_state()

    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.get_by_role("button", name="开始识别").is_visible()
    shot(page, "11-upload-in-chinese")
    page.get_by_role("button", name="English").click()


def test_usage_chart_and_api_tokens(signed_in, server):
    page = signed_in
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url(f"{server.url}/usage/")
    assert page.locator("svg.chart__svg rect.chart__completion").count() == 30
    shot(page, "12-usage")

    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Token name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").text_content()
    assert secret.startswith("mocr_")
    shot(page, "13-token-created")

    page.on("dialog", lambda dialog: dialog.accept())
    row = page.locator("tr", has_text="laptop")
    row.get_by_role("button", name="Revoke").click()
    row.get_by_text("Revoked").wait_for()
    assert page.url.endswith("/accounts/tokens/")  # htmx swapped the row in place
    shot(page, "14-token-revoked")


def test_dark_mode_follows_the_system_setting_and_every_page_links_the_api_docs(signed_in, server):
    page = signed_in
    background = "() => getComputedStyle(document.documentElement).backgroundColor"
    page.goto(f"{server.url}/accounts/tokens/")
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    shot(page, "15-tokens-dark")
    page.emulate_media(color_scheme="light")

    assert light == "rgb(246, 247, 249)" and dark == "rgb(18, 21, 28)"
    assert page.locator("main").get_by_role("link", name=re.compile("API documentation")).count() == 1
    page.locator("footer").get_by_role("link", name="API documentation").click()
    page.wait_for_url(f"{server.url}/api/docs")
