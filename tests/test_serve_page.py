"""The search page in a real browser: headless Chromium (Debian's) driven by Playwright types a
query, applies a filter, opens a result's explanation and saves a policy. Screenshots go to
the test's temporary folder."""

import json
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes say Chromium must start here: no sandbox as root, and none of its
# background connections (this machine's network is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="no chromium (.ci/run installs Debian's chromium package)")


def scores_of(page) -> list[dict]:
    return [json.loads(s) for s in page.locator(".result").evaluate_all(
        "cards => cards.map(card => card.dataset.scores)")]


def test_type_a_query_filter_explain_and_save_a_policy(served, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(served["url"])
            page.wait_for_selector("#index option", state="attached")
            page.select_option("#index", "laion400m")

            page.fill("#query", "a photo of a red circle")
            with page.expect_response("**/api/search"):
                page.click("#search")
            page.wait_for_selector(".result")
            assert page.locator(".result").count() == 40
            assert "pass the filters" in page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "1-query.png"))
            first = scores_of(page)

            # A filter: aesthetic at least the median of this page's results.
            floor = sorted(s["aesthetic"] for s in first)[len(first) // 2]
            page.fill("#min-aesthetic", str(floor))
            with page.expect_response("**/api/search"):
                page.click("#search")
            page.wait_for_function("!document.querySelector('#status').textContent.startsWith('searching')")
            filtered = scores_of(page)
            assert filtered and all(s["aesthetic"] >= floor for s in filtered)
            assert "aesthetic" in page.inner_text("#status")  # says what the filter removed
            page.screenshot(path=str(tmp_path / "2-filtered.png"))

            # A result's explanation: in or out of each policy, and why.
            with page.expect_response("**/api/explain"):
                page.locator(".result .explain").first.click()
            page.wait_for_selector("#explanation-body [data-policy]")
            decisions = page.locator("#explanation-body [data-policy]")
            assert decisions.count() >= 2
            assert "laion400m" in page.inner_text("#explanation-body")
            page.screenshot(path=str(tmp_path / "3-explained.png"))

            # Save the query and filters as a policy.
            page.fill("#subset-limit", "20")
            page.fill("#policy-name", "bright_red_circles")
            with page.expect_response("**/api/policies"):
                page.click("#save-policy")
            page.wait_for_function("document.querySelector('#subset-result').textContent.includes('saved')")
            page.screenshot(path=str(tmp_path / "4-saved.png"))
            saved = served["policies"] / "bright_red_circles.sql"
            assert saved.exists()
            text = saved.read_text()
            assert "min_aesthetic" in text and "a photo of a red circle" in text
            assert errors == []
        finally:
            browser.close()
    assert all((tmp_path / f).stat().st_size > 0 for f in ("1-query.png", "2-filtered.png", "3-explained.png",
                                                            "4-saved.png"))
