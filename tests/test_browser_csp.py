"""The Content-Security-Policy in a real browser: with production settings, every page (the app, the account pages,
the admin, the API docs) is used as a person would, and Chromium reports no CSP violation and no console error.

The list of pages visited is checked against the URL conf, so a new page cannot skip this test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from testing.documents import SAMPLES, make_numbered_pdf
from testing.production import create_superuser

from .conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STAFF_PASSWORD = "staff password for the CSP test 8c1e"
#: Pages that are not HTML documents a person opens: streams, downloads, images, form targets, redirects.
NOT_PAGES = {
    "ocr:job-events",
    "ocr:job-download",
    "ocr:page-image",
    "ocr:page-download",
    "ocr:job-new",
    "ocr:preview",
    "ocr:job-cancel",
    "ocr:job-delete",
    "ocr:job-retry",
    "ocr:job-again",
    "accounts:logout",
    "accounts:token-revoke",
    "accounts:webhook-rotate",
    "accounts:password-change-done",
    "set_language",
    "healthz",
    "favicon",
    "metrics",
    "api-metrics",
    "admin-login",
}
VIOLATION_RECORDER = """
window.__csp = window.__csp || [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(
  `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber} ${e.sample}`));
"""


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    app = module_app_server(
        {"OCR_ENGINE": "openai", "LLM_BASE_URL": fake_vllm_server.base_url, "OCR_LIVE_FLUSH_SECONDS": "0.2"},
        name="csp-server",
        production=True,
    )
    app.register_and_login("csp-user")
    create_superuser(app, "csp-staff", STAFF_PASSWORD)
    return app


class Browser:
    """One page with every CSP violation, console error and page error it meets, and the URL names it visited."""

    def __init__(self, chromium: Any, server: Any) -> None:
        self.context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
        self.context.add_init_script(VIOLATION_RECORDER)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.server = server
        self.problems: list[str] = []
        self.visited: set[str] = set()
        self.documents: list[Any] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("response", self._response)
        self.page.on("framenavigated", lambda frame: self._collect())

    def _console(self, message: Any) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.problems.append(f"console {message.type}: {message.text} ({self.page.url})")

    def _response(self, response: Any) -> None:
        if response.request.resource_type == "document":
            self.documents.append(response)
        if response.status >= 400 and response.request.resource_type != "document":
            self.problems.append(f"HTTP {response.status}: {response.url} ({self.page.url})")

    def _collect(self) -> None:
        try:
            found = self.page.evaluate("window.__csp ? window.__csp.splice(0) : []")
        except Exception:  # the page is navigating; its violations also reach the console
            return
        self.problems.extend(f"CSP: {item} ({self.page.url})" for item in found)

    def goto(self, path: str, name: str) -> None:
        self.page.goto(self.server.url + path)
        self.page.wait_for_load_state("networkidle")
        self.visited.add(name)
        self._collect()

    def check(self) -> None:
        self._collect()
        assert self.problems == [], "\n".join(self.problems)
        for response in self.documents:
            if response.url.startswith(self.server.url) and response.status < 300:
                assert "script-src 'self'" in response.headers.get("content-security-policy", ""), response.url

    def close(self) -> None:
        self.context.close()


def html_page_names() -> set[str]:
    names: set[str] = set()

    def walk(patterns: list[Any], namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    continue  # the admin is visited through its index, lists and forms below
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, inner)
            elif isinstance(pattern, URLPattern) and pattern.name:
                names.add(namespace + pattern.name)

    walk(get_resolver().url_patterns, "")
    return {name for name in names if (name not in NOT_PAGES and not name.startswith("api:")) or name == "api:docs"}


def log_in(browser: Browser, username: str, password: str) -> None:
    page = browser.page
    browser.goto("/accounts/login/", "accounts:login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{browser.server.url}/")


def test_every_page_satisfies_the_content_security_policy(chromium, server, fake_vllm_server):
    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=60, token_delay=0.01)
    browser = Browser(chromium, server)
    page = browser.page
    try:
        browser.goto("/accounts/register/", "accounts:register")
        log_in(browser, "csp-user", PASSWORD)
        browser.visited.add("ocr:home")

        # Upload with the live preview (htmx), then follow the job live (SSE) to its end.
        page.locator("input[type=file]").set_input_files(
            {"name": "book.pdf", "mimeType": "application/pdf", "buffer": make_numbered_pdf(2)}
        )
        page.wait_for_selector("#preview img")
        page.get_by_role("button", name="Start OCR").click()
        page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}/$"))
        page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
        browser.visited.add("ocr:job")
        job_path = page.url.removeprefix(server.url)
        browser.goto(job_path, "ocr:job")  # the finished job, reloaded: page images and text

        browser.goto("/", "ocr:home")
        page.locator("input[type=file]").set_input_files(
            {"name": "page.png", "mimeType": "image/png", "buffer": SAMPLES["short"].render()}
        )
        page.wait_for_selector("#preview img")
        page.locator("input[name=preset][value=document]").check()
        page.get_by_role("button", name="Start OCR").click()
        page.wait_for_selector('[data-job-status="done"]', timeout=30_000)
        batch = ",".join(path.strip("/").rsplit("/", 1)[-1] for path in (job_path, page.url))
        browser.goto(f"/jobs/batch?jobs={batch}", "ocr:job-batch")

        browser.goto("/jobs/", "ocr:history")
        browser.goto("/usage/", "ocr:usage")
        browser.goto("/accounts/tokens/", "accounts:tokens")
        page.get_by_label("Token name").fill("csp test")
        page.get_by_role("button", name="Create token").click()
        page.wait_for_selector("#new-token")
        browser.goto("/accounts/password/", "accounts:password-change")
        browser.goto("/api/docs", "api:docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
        page.locator(".opblock-summary").first.click()
        page.wait_for_selector(".opblock-body")
        page.locator("button.authorize").first.click()
        page.wait_for_selector(".auth-container")

        # The language switch (a form on every page), then the admin as staff.
        browser.goto("/", "ocr:home")
        page.locator("form.lang button[lang=zh-hans]").click()
        page.wait_for_load_state("networkidle")
        page.context.clear_cookies()
        log_in(browser, "csp-staff", STAFF_PASSWORD)
        for path in (
            "/admin/",
            "/admin/ocr/ocrjob/",
            "/admin/ocr/ocrjob/?status__exact=done",
            "/admin/auth/user/",
            "/admin/accounts/userlimits/add/",
            "/admin/accounts/apitoken/",
        ):
            browser.goto(path, "admin")
        page.locator("#result_list tbody th a").first.click()  # a token's change form
        page.wait_for_load_state("networkidle")
        browser.goto("/admin/ocr/ocrjob/", "admin")
        page.locator("#result_list tbody th a").first.click()  # a job's change form, with its pages inline
        page.wait_for_load_state("networkidle")
        browser.goto("/admin/auth/user/", "admin")
        page.locator("#result_list tbody th a").first.click()  # a user's change form, with the limits inline
        page.wait_for_load_state("networkidle")

        browser.check()
    finally:
        browser.close()

    assert html_page_names() - browser.visited == set(), "pages the CSP test does not visit"


def test_the_csp_blocks_what_it_should(chromium, server):
    """The policy is really enforced: an inline script injected into a page does not run."""
    browser = Browser(chromium, server)
    try:
        browser.goto("/accounts/login/", "accounts:login")
        ran = browser.page.evaluate(
            """() => { window.__ran = false; const s = document.createElement("script");
                       s.textContent = "window.__ran = true"; document.body.append(s); return window.__ran; }"""
        )
        browser._collect()
    finally:
        browser.close()

    assert ran is False
    assert any("script-src" in problem for problem in browser.problems), browser.problems


def test_swagger_ui_assets_are_served_by_the_app(server):
    import httpx

    html = httpx.get(f"{server.url}/api/docs").text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        response = httpx.get(server.url + asset)
        assert response.status_code == 200, asset
        assert Path(asset).suffix in (".js", ".css", ".svg")
