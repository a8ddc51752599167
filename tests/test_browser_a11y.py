"""Accessibility: axe-core (vendored in ``testing/vendor/axe-core``) on every page, in a real Chromium.

Every page a person meets, signed out and signed in, with a finished job: in English at 1280 px, in Chinese at
390 px, and in dark mode. The check fails on any violation axe rates serious or critical (contrast, names of
controls and links, labels, landmarks, ARIA misuse…) and names the rule and the elements.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from testing.documents import make_numbered_pdf
from testing.production import create_superuser
from testing.servers import ROOT, AppServer

from .conftest import PASSWORD, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AXE = (ROOT / "testing" / "vendor" / "axe-core" / "axe.min.js").read_text()
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
STAFF_PASSWORD = "staff password for the a11y test 5d2f"
SIGNED_OUT = ("/accounts/login/", "/accounts/register/")
SIGNED_IN = ("/", "/jobs/", "/usage/", "/accounts/tokens/", "/accounts/password/")
VARIANTS = {
    "en-1280": {"viewport": {"width": 1280, "height": 900}, "locale": "en-GB"},
    "zh-390": {"viewport": {"width": 390, "height": 844}, "locale": "zh-CN", "is_mobile": True, "has_touch": True},
    "en-1280-dark": {"viewport": {"width": 1280, "height": 900}, "locale": "en-GB", "color_scheme": "dark"},
}


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    return module_app_server(
        {"OCR_ENGINE": "openai", "LLM_BASE_URL": fake_vllm_server.base_url, "OCR_LIVE_FLUSH_SECONDS": "0.2"},
        name="a11y-server",
    )


@pytest.fixture(scope="module")
def finished_job(server) -> str:
    """A two-page PDF job of ``erin``, read to its end through the API."""
    token = server.register_and_login("erin", PASSWORD)
    response = httpx.post(
        f"{server.url}/api/ocr/pdf",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": ("two pages.pdf", make_numbered_pdf(2), "application/pdf")},
        data={"prompt": "<|grounding|>Convert the document to markdown."},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert '"type":"end"' in response.text
    return response.headers["X-Job-Id"]


def serious_violations(page: Any) -> list[str]:
    page.evaluate(AXE)  # through the DevTools protocol: the page's CSP does not apply to it
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} — "
        + "; ".join(" ".join(node["target"]) for node in violation["nodes"][:5])
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def check_pages(page: Any, server: AppServer, paths: tuple[str, ...], variant: str) -> dict[str, list[str]]:
    found = {}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for path in paths:
        response = page.goto(f"{server.url}{path}")
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        page.wait_for_load_state("networkidle")
        name = path.strip("/").replace("/", "-") or "home"
        page.screenshot(path=str(SCREENSHOTS / f"a11y-{variant}-{name[:40]}.png"), full_page=True)
        problems = serious_violations(page)
        if problems:
            found[path] = problems
    return found


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_page_has_a_serious_accessibility_violation(chromium, server, finished_job, variant):
    context = chromium.new_context(**VARIANTS[variant])
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        found = check_pages(page, server, SIGNED_OUT, variant)
        sign_in(page, server, "erin")
        found |= check_pages(page, server, (*SIGNED_IN, f"/jobs/{finished_job}/"), variant)
    finally:
        context.close()
    assert found == {}, "\n".join(f"{path}:\n  " + "\n  ".join(problems) for path, problems in found.items())


def test_the_admin_index_is_accessible_and_its_usage_table_readable(chromium, server, finished_job):
    """The operators' console: axe finds nothing serious, and the usage table's column headers stay on one line
    (Django's dashboard styles had broken them into one letter per line)."""
    create_superuser(server, "a11y-staff", STAFF_PASSWORD)
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{server.url}/admin/login/")
        page.locator("input[name=username]").fill("a11y-staff")
        page.locator("input[name=password]").fill(STAFF_PASSWORD)
        page.locator("form:has(input[name=password]) [type=submit]").click()
        page.wait_for_url(f"{server.url}/admin/")
        headers = page.locator("#ocr-usage-summary thead th")
        assert headers.count() == 7
        font_size = page.evaluate(
            "() => parseFloat(getComputedStyle(document.querySelector('#ocr-usage-summary thead th')).fontSize)"
        )
        heights = [box["height"] for box in (headers.nth(i).bounding_box() for i in range(1, 7)) if box]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "a11y-admin-index.png"), full_page=True)
        assert max(heights) < 3 * font_size, (heights, font_size)  # one line of text and the cell's padding
        assert serious_violations(page) == []
    finally:
        context.close()
