"""The searchable PDF opens in Chromium's own PDF viewer: every page loaded, no error, a screenshot to look at.

A sync module of its own: Playwright's sync API owns this thread's event loop while the module's browser runs.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocr.searchable_pdf import page_text, searchable_pdf_from_pdf
from testing.documents import SAMPLES, make_image_pdf
from testing.waiting import wait_until

from .test_exports_pdf import GROUNDED, _png

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
VIEWER_STATE = """() => {
  const viewer = document.querySelector('pdf-viewer');
  if (!viewer || !viewer.shadowRoot) return null;
  const toolbar = viewer.shadowRoot.querySelector('viewer-toolbar');
  const selector = toolbar && toolbar.shadowRoot && toolbar.shadowRoot.querySelector('viewer-page-selector');
  return {pages: selector ? selector.docLength : 0, error: !!viewer.shadowRoot.querySelector('viewer-error-dialog')};
}"""


class Files:
    """Serves a few documents from memory on loopback (the viewer fetches the document itself)."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        documents = self.documents

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = documents.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def files() -> Iterator[Files]:
    served = Files()
    yield served
    served.server.shutdown()
    served.server.server_close()


def viewer_state(browser, url: str, screenshot: str | None = None) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)

        def loaded_or_failed() -> dict | None:
            viewer = next((frame for frame in page.frames if frame.url.startswith("chrome-extension://")), None)
            state = viewer.evaluate(VIEWER_STATE) if viewer is not None else None
            return state if state and (state["pages"] or state["error"]) else None

        state = wait_until(
            loaded_or_failed,
            timeout=20,
            what=f"Chromium's PDF viewer shows pages or an error for {url}",
            pause=lambda seconds: page.wait_for_timeout(seconds * 1000),  # Playwright's loop runs meanwhile
        )
        if screenshot:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / screenshot))
        return state
    finally:
        page.close()


def test_the_searchable_pdf_opens_in_chromiums_pdf_viewer(chromium, files):
    texts = [GROUNDED, GROUNDED, "Last page.\n最后一页。"]
    original = make_image_pdf([SAMPLES["english"].render(), _png(1200, 800), SAMPLES["chinese"].render()])
    # What result.pdf of such a job holds (tests/test_exports_pdf.py checks the export itself).
    result = searchable_pdf_from_pdf(original, [page_text(n, text, None) for n, text in enumerate(texts, start=1)])
    files.documents["/result.pdf"] = result
    files.documents["/broken.pdf"] = files.documents["/result.pdf"][:2000]

    assert viewer_state(chromium, f"{files.url}/result.pdf", "result-pdf-in-chromium.png") == {
        "pages": 3,
        "error": False,
    }
    # The same check tells a damaged file apart: it is not an empty pass.
    assert viewer_state(chromium, f"{files.url}/broken.pdf")["error"] is True
