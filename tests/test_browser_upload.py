"""The upload flow in a real browser: batches, the form that keeps its files, the prompt counter, Run again, and
every page at 360 px wide. Debian's Chromium through Playwright, a real Daphne, the fake vLLM engine.

Each step saves a screenshot under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import base64
import re

import pytest
from playwright.sync_api import expect

from testing.documents import SAMPLES, make_numbered_pdf
from testing.servers import ROOT

from .conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PNG = SAMPLES["short"].render()
JOB_URL = re.compile(r".*/jobs/[0-9a-f-]{36}/$")
BATCH_URL = re.compile(r".*/jobs/batch\?jobs=[0-9a-f,-]+$")
ONE_DATE_FORMAT = re.compile(r"^\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2} UTC$")


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    app = module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            "OCR_PAGE_CONCURRENCY": "4",
            "OCR_LIVE_FLUSH_SECONDS": "0.2",
        },
        name="browser-upload-server",
    )
    app.register_and_login("erin")
    return app


@pytest.fixture
def browse(chromium, server):
    """Opens a signed-in page ``width`` pixels wide (JavaScript on or off)."""
    contexts = []

    def open_page(width: int = 1280, *, javascript: bool = True, language: str = "en"):
        context = chromium.new_context(
            viewport={"width": width, "height": 900 if width > 600 else 800},
            locale="en-GB",
            java_script_enabled=javascript,
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        sign_in(page, server, "erin")
        if language != "en":
            context.add_cookies([{"name": "django_language", "value": language, "url": server.url}])
            page.reload()
        return page

    yield open_page
    for context in contexts:
        context.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"upload-{name}.png"), full_page=True)


def file_payload(name: str, data: bytes, mime: str) -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def drop_files(page, files: list[tuple[str, bytes, str]]) -> None:
    """Drop ``files`` on the upload form's drop zone, as a file manager would."""
    payload = [{"name": name, "mime": mime, "data": base64.b64encode(data).decode()} for name, data, mime in files]
    page.evaluate(
        """files => {
          const transfer = new DataTransfer();
          for (const file of files) {
            const bytes = Uint8Array.from(atob(file.data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], file.name, { type: file.mime }));
          }
          const zone = document.querySelector("[data-dropzone]");
          zone.dispatchEvent(new DragEvent("dragenter", { dataTransfer: transfer, bubbles: true, cancelable: true }));
          zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        payload,
    )


def start_button(page):
    return page.get_by_role("button", name="Start OCR")


def ready_items(page):
    return page.locator('#preview [data-upload-item][data-state="ready"]')


def wait_batch_done(page, count: int) -> None:
    rows = page.locator("#batch-rows tr")
    expect(rows).to_have_count(count)
    expect(page.locator("#batch-rows .badge--done")).to_have_count(count, timeout=30_000)


def no_horizontal_overflow(page) -> tuple[int, int]:
    return page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")


def test_two_dropped_files_make_two_jobs_shown_together_without_a_second_upload(browse, server, fake):
    fake.set_default(tokens=40, token_delay=0.01)
    page = browse(1280)
    drop_files(page, [("first.png", PNG, "image/png"), ("second.pdf", make_numbered_pdf(2), "application/pdf")])

    expect(ready_items(page)).to_have_count(2)
    expect(page.locator("[data-upload-summary]")).to_have_text("2 files will be read, one job each.")
    assert page.locator("#preview .upload-item__name").all_text_contents() == ["first.png", "second.pdf"]
    shot(page, "01-two-files-dropped")
    with page.expect_request(lambda request: request.url.endswith("/jobs/new")) as submitted:
        start_button(page).click()
    body = submitted.value.post_data_buffer or b""
    page.wait_for_url(BATCH_URL)

    assert body.count(b'name="pending"') == 2
    assert b"\x89PNG" not in body and b"%PDF" not in body  # the preview kept the bytes: they travel once
    expect(page.get_by_text("2 jobs started.")).to_be_visible()
    wait_batch_done(page, 2)
    assert page.locator("#batch-rows a").all_text_contents() == ["first.png", "second.pdf"]
    assert page.locator("#batch-rows td.num").nth(0).text_content().strip() == "1 / 1"
    shot(page, "02-batch-done")


def test_a_file_the_preview_could_not_check_is_sent_alone_and_each_file_runs_once(browse, server, fake):
    """The preview of one file fails (the network, say): Start sends that file's bytes and only the other's id."""
    fake.set_default(tokens=20, token_delay=0.01)
    page = browse(1280)
    page.route(
        "**/jobs/preview",
        lambda route: (
            route.abort() if b'filename="unlucky' in (route.request.post_data_buffer or b"") else route.continue_()
        ),
    )
    page.locator("input[name=file]").set_input_files(
        [
            file_payload("lucky.png", PNG, "image/png"),
            file_payload("unlucky.pdf", make_numbered_pdf(1), "application/pdf"),
        ]
    )
    expect(ready_items(page)).to_have_count(1)
    expect(page.locator("[data-upload-item][data-state=unchecked]")).to_have_count(1)
    shot(page, "05-one-file-unchecked")

    with page.expect_request(lambda request: request.url.endswith("/jobs/new")) as submitted:
        start_button(page).click()
    body = submitted.value.post_data_buffer or b""
    page.wait_for_url(BATCH_URL)

    assert body.count(b'name="pending"') == 1 and b'filename="unlucky.pdf"' in body
    assert b'filename="lucky.png"' not in body  # kept by its preview: its bytes travel once
    wait_batch_done(page, 2)
    assert sorted(page.locator("#batch-rows a").all_text_contents()) == ["lucky.png", "unlucky.pdf"]


def test_several_picked_files_at_390_px_make_one_job_each(browse, server, fake):
    fake.set_default(tokens=30, token_delay=0.01)
    page = browse(390)
    page.locator("input[name=file]").set_input_files(
        [file_payload("a.png", PNG, "image/png"), file_payload("b.png", PNG, "image/png")]
    )
    expect(ready_items(page)).to_have_count(2)
    page.locator("input[name=preset][value=markdown]").check()
    shot(page, "03-two-files-picked-390")

    start_button(page).click()
    page.wait_for_url(BATCH_URL)
    wait_batch_done(page, 2)

    width, viewport = no_horizontal_overflow(page)
    assert width <= viewport
    shot(page, "04-batch-done-390")
    page.locator("#batch-rows a", has_text="a.png").click()
    page.wait_for_url(JOB_URL)
    expect(page.locator(".prompt code")).to_have_text("Free OCR, output markdown.")


def test_a_refused_file_keeps_start_disabled_until_a_good_one_is_chosen(browse, server):
    page = browse(1280)
    file_input = page.locator("input[name=file]")
    expect(start_button(page)).to_be_disabled()  # nothing chosen yet

    file_input.set_input_files(file_payload("notes.html", b"<html>not a scan</html>", "text/html"))

    refused = page.locator('#preview [data-state="refused"]')
    expect(refused).to_contain_text("notes.html")
    expect(refused).to_contain_text("This is not a supported file.")
    expect(start_button(page)).to_be_disabled()
    expect(page.locator("[data-upload-summary]")).to_have_text("The chosen file was refused: choose another one.")
    shot(page, "05-refused-file-start-disabled")

    page.evaluate("() => { document.querySelector('form.upload').dataset.maxBytes = '100'; }")
    file_input.set_input_files(file_payload("big.png", PNG, "image/png"))
    expect(refused).to_contain_text("This file is larger than")
    expect(start_button(page)).to_be_disabled()
    shot(page, "06-too-large-file-start-disabled")

    page.evaluate("() => { document.querySelector('form.upload').dataset.maxBytes = '0'; }")
    file_input.set_input_files(
        [file_payload("good.png", PNG, "image/png"), file_payload("bad.txt", b"x", "text/plain")]
    )
    expect(ready_items(page)).to_have_count(1)
    expect(start_button(page)).to_be_enabled()
    expect(page.locator("[data-upload-summary]")).to_have_text("One file will be read. Refused files are not started.")
    shot(page, "07-one-good-one-refused")


def test_the_prompt_counter_follows_the_text_and_stops_start_past_the_limit(browse, server):
    page = browse(390)
    page.locator("input[name=file]").set_input_files(file_payload("count.png", PNG, "image/png"))
    expect(ready_items(page)).to_have_count(1)
    page.locator("input[name=preset][value=custom]").check()
    prompt = page.get_by_label("Prompt or phrase")
    counter = page.locator("#prompt-counter")

    prompt.fill("Read the table.")
    expect(counter).to_have_text(re.compile(r"^15 / 4000 characters"))
    expect(start_button(page)).to_be_enabled()
    shot(page, "08-prompt-counter")

    prompt.fill("x" * 4001)
    expect(counter).to_have_text(re.compile(r"^4001 / 4000 characters · too long"))
    expect(start_button(page)).to_be_disabled()
    assert prompt.input_value() == "x" * 4001  # nothing is cut off silently
    shot(page, "09-prompt-too-long")

    page.locator("input[name=preset][value=locate]").check()  # the preset's own words count too
    limit = 4000 - len("Locate <|ref|><|/ref|> in the image.")
    prompt.fill("y" * limit)
    expect(counter).to_have_text(re.compile(rf"^{limit} / {limit} characters"))
    expect(start_button(page)).to_be_enabled()


def test_the_chosen_file_survives_a_validation_error(browse, server, fake):
    fake.set_default(text="Kept and read.", token_delay=0.005)
    page = browse(1280)
    page.locator("input[name=file]").set_input_files(file_payload("survivor.png", PNG, "image/png"))
    expect(ready_items(page)).to_have_count(1)
    page.locator("input[name=preset][value=custom]").check()

    start_button(page).click()  # no prompt typed: refused by the server
    expect(page.get_by_text("Type the prompt or the phrase to find.")).to_be_visible()
    kept = page.locator("#preview .upload-item--kept")
    expect(kept).to_contain_text("survivor.png")
    assert kept.locator("input[type=checkbox]").is_checked()
    expect(page.get_by_text("The file you chose is kept on the server")).to_be_visible()
    assert page.locator("input[name=file]").input_value() == ""  # the browser forgot it; the server did not
    shot(page, "10-file-kept-after-error")

    page.get_by_label("Prompt or phrase").fill("Read every word.")
    start_button(page).click()
    page.wait_for_url(JOB_URL)
    expect(page.locator(".prompt code")).to_have_text("Read every word.")
    page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
    assert page.locator("#job-header h1").text_content() == "survivor.png"


def test_without_javascript_a_refused_form_keeps_the_file_too(browse, server, fake):
    fake.set_default(text="No script needed.", token_delay=0.005)
    page = browse(390, javascript=False)
    page.locator("input[name=file]").set_input_files(
        [file_payload("plain-1.png", PNG, "image/png"), file_payload("plain-2.png", PNG, "image/png")]
    )
    page.locator("input[name=preset][value=custom]").check()
    start_button(page).click()
    page.wait_for_load_state()

    expect(page.locator("#preview .upload-item--kept")).to_have_count(2)
    expect(page.get_by_text("The 2 files you chose are kept on the server")).to_be_visible()
    shot(page, "11-no-js-files-kept")
    page.get_by_label("Prompt or phrase").fill("Read it.")
    start_button(page).click()
    page.wait_for_url(BATCH_URL)
    expect(page.locator("#batch-rows tr")).to_have_count(2)
    shot(page, "12-no-js-batch")


def test_run_again_with_another_preset_makes_a_new_job_without_uploading(browse, server, fake):
    fake.set_default(text="# Title\n\nFirst run.", token_delay=0.005)
    page = browse(1280)
    page.locator("input[name=file]").set_input_files(file_payload("again.png", PNG, "image/png"))
    expect(ready_items(page)).to_have_count(1)
    start_button(page).click()
    page.wait_for_url(JOB_URL)
    page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
    first_url = page.url
    requests_before = fake.stats["requests"]

    page.get_by_text("Run again…").click()
    expect(page.locator(".run-again__text")).to_be_hidden()  # only the presets that take a text show its field
    page.get_by_label("What to read").select_option("custom")
    expect(page.locator(".run-again__text")).to_be_visible()
    page.get_by_label("What to read").select_option("markdown")
    shot(page, "13-run-again-form")
    with page.expect_request(lambda request: request.url.endswith("/again")) as submitted:
        page.get_by_role("button", name="Start the new job").click()
    page.wait_for_url(JOB_URL)

    assert page.url != first_url
    assert b"\x89PNG" not in (submitted.value.post_data_buffer or b"")
    expect(page.locator(".prompt code")).to_have_text("Free OCR, output markdown.")
    page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
    assert fake.stats["requests"] == requests_before + 1
    assert page.locator("#job-header h1").text_content() == "again.png"
    shot(page, "14-run-again-done")


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_every_page_fits_360_px_without_horizontal_scrolling(browse, server, fake, language):
    fake.set_default(tokens=30, token_delay=0.005)
    page = browse(360, language=language)
    long_name = "a-very-long-scanned-file-name-without-any-spaces-from-the-office-printer-2026-12-02.png"
    page.locator("input[name=file]").set_input_files(file_payload(long_name, PNG, "image/png"))
    expect(ready_items(page)).to_have_count(1)
    page.locator("button[data-start]").click()
    page.wait_for_url(JOB_URL)
    page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
    job_url = page.url
    page.goto(f"{server.url}/accounts/tokens/")
    page.locator("input[name=name]").fill("phone")
    page.locator("form[action$='/accounts/tokens/'] button[type=submit]").click()
    page.wait_for_load_state()
    expect(page.locator("#new-token")).to_have_text(re.compile("^mocr_"))

    pages = {
        "tokens": f"{server.url}/accounts/tokens/",
        "home": f"{server.url}/",
        "history": f"{server.url}/jobs/",
        "usage": f"{server.url}/usage/",
        "job": job_url,
        "password": f"{server.url}/accounts/password/",
    }
    too_wide = {}
    for name, url in pages.items():
        if name == "tokens":  # as the form left it: the new token, and the curl command that holds it
            assert page.url == url
        else:
            page.goto(url)
        width, viewport = no_horizontal_overflow(page)
        if width > viewport:
            too_wide[name] = width
        shot(page, f"15-{language}-360-{name}")
    assert too_wide == {}
    assert page.evaluate("() => window.innerWidth") == 360


def test_dates_read_the_same_on_every_page(browse, server, fake):
    fake.set_default(tokens=20, token_delay=0.005)
    page = browse(1280)
    page.locator("input[name=file]").set_input_files(file_payload("dated.png", PNG, "image/png"))
    expect(ready_items(page)).to_have_count(1)
    start_button(page).click()
    page.wait_for_url(JOB_URL)
    on_job_page = page.locator("#job-header time").text_content()

    page.goto(f"{server.url}/jobs/")
    in_history = page.locator("tbody tr").first.locator("time").text_content()
    page.goto(f"{server.url}/")
    on_home = page.locator(".recent time").first.text_content()

    assert ONE_DATE_FORMAT.match(on_job_page), on_job_page
    assert on_job_page == in_history == on_home
    machine = page.locator(".recent time").first.get_attribute("datetime")
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00$", machine)


def test_a_chosen_folder_brings_its_images_and_pdfs(browse, server, tmp_path):
    folder = tmp_path / "scans"
    (folder / "inner").mkdir(parents=True)
    (folder / "one.png").write_bytes(PNG)
    (folder / "inner" / "two.pdf").write_bytes(make_numbered_pdf(1))
    (folder / "notes.txt").write_text("not a scan")
    page = browse(1280)

    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Choose a folder").click()
    chooser.value.set_files(str(folder))

    expect(ready_items(page)).to_have_count(2)
    names = sorted(page.locator("#preview .upload-item__name").all_text_contents())
    assert names == ["one.png", "two.pdf"]  # the text file is left out
    expect(start_button(page)).to_be_enabled()
    shot(page, "16-folder-chosen")
