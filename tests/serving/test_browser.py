"""The web page in headless Chromium: upload a real photo, read the verdict, watch the category switch."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serving.conftest import RunningServer, Runs

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed: browser tests skipped")
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium (/usr/bin/chromium) is not installed: browser tests skipped")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium")), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(runs: Runs, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One server with default settings for the tests that need nothing special."""
    running = RunningServer(runs.main, "--db", str(tmp_path_factory.mktemp("browser") / "log.db"))
    yield running
    running.stop()


def check_listing(browser, url: str, declared: str, photo: Path):  # type: ignore[no-untyped-def]
    """Open the page, choose ``declared``, add ``photo``, submit; returns the page showing the verdict."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector(f"#category option[value='{declared}']", state="attached")
    page.get_by_label("Category").select_option(declared)
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#previews img")
    page.get_by_role("button", name="Check listing").click()
    page.wait_for_selector("#verdict[data-verdict]", timeout=60_000)
    return page


def test_a_mismatch_shows_a_warning_and_switches_the_category(browser, server: RunningServer, tmp_path: Path, confident_shoe: Path) -> None:  # type: ignore[no-untyped-def]
    page = check_listing(browser, server.url, "hat", confident_shoe)
    page.screenshot(path=str(tmp_path / "mismatch.png"), full_page=True)
    assert page.get_attribute("#verdict", "data-verdict") == "mismatch"
    assert "Category mismatch" in page.text_content("#verdict")
    assert "look like Shoes, not Hat" in page.text_content("#verdict-live")
    assert page.input_value("#category") == "shoes"
    assert "Switched from Hat to Shoes" in page.text_content("#category-note")
    assert page.text_content("#fact-predicted") == "Shoes"
    page.get_by_role("button", name="Undo").click()
    assert page.input_value("#category") == "hat"
    assert (tmp_path / "mismatch.png").stat().st_size > 10_000

    page.goto(f"{server.url}/moderation")
    page.wait_for_selector("#rows tr")
    assert "Mismatch" in page.text_content("#rows") and "Shoes" in page.text_content("#rows")
    page.screenshot(path=str(tmp_path / "moderation.png"), full_page=True)


def test_an_uncertain_verdict_changes_nothing(
    browser, runs: Runs, tmp_path: Path, confident_shoe: Path, start_server: Callable[..., RunningServer]  # type: ignore[no-untyped-def]
) -> None:
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--confidence", "1.0")
    page = check_listing(browser, server.url, "hat", confident_shoe)
    page.screenshot(path=str(tmp_path / "uncertain.png"), full_page=True)
    assert page.get_attribute("#verdict", "data-verdict") == "uncertain"
    assert "not confident" in page.text_content("#verdict-live")
    assert page.input_value("#category") == "hat"
    assert page.is_hidden("#category-note")


def test_the_page_works_from_the_keyboard(browser, server: RunningServer, confident_shoe: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#category option[value='shoes']", state="attached")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    focused = [page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")]
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert "category" in focused and "photo" in focused  # both form controls are reachable by Tab
    page.focus("#category")
    page.keyboard.press("End")  # a native select: the keyboard chooses the last category
    assert page.input_value("#category") == "t-shirt"
    with page.expect_file_chooser() as chooser:
        page.focus("#photo")
        page.keyboard.press("Enter")
    chooser.value.set_files(str(confident_shoe))
    page.focus("#submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#verdict[data-verdict]", timeout=60_000)
    assert page.get_attribute("#verdict", "data-verdict") == "mismatch"
    assert page.input_value("#category") == "shoes"


def test_moderators_review_the_queue_with_the_keyboard(browser, runs: Runs, tmp_path: Path, confident_shoe: Path) -> None:  # type: ignore[no-untyped-def]
    """Confirm, correct and mark off-topic with c, r and o: the audit trail and the exported dataset hold exactly those."""
    import csv
    import re
    import subprocess
    import sys

    import httpx

    from tests.serving.conftest import upload

    (tmp_path / "keys").write_text("anna:anna-key\nshop:shop-key\n")
    database = tmp_path / "log.db"
    running = RunningServer(runs.main, "--db", str(database), "--api-keys", str(tmp_path / "keys"))
    try:
        for photo in [confident_shoe] * 3:  # three listings of shoes filed under hats: three mismatches
            httpx.post(f"{running.url}/v1/check", files={"image": upload(photo)}, data={"category": "hat"},
                       headers={"X-API-Key": "shop-key"}, timeout=60).raise_for_status()
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.add_init_script("sessionStorage.setItem('vitrina-api-key', 'anna-key')")
        page.goto(f"{running.url}/moderation")
        reviewed = []

        def current() -> int:
            page.wait_for_selector("#review-item:not([hidden]) #review-summary:has-text('Check')")
            return int(re.search(r"Check (\d+)", page.text_content("#review-summary") or "").group(1))  # type: ignore[union-attr]

        def after(key: str, typed: str | None = None) -> None:
            shown = current()
            reviewed.append(shown)
            page.keyboard.press(key)
            if typed is not None:
                page.keyboard.type(typed)
                page.keyboard.press("Enter")
            page.wait_for_function(f"!document.querySelector('#review-summary').textContent.includes('Check {shown}:')"
                                   " || document.querySelector('#review-item').hidden")

        page.wait_for_selector("#review-photos img[src^='blob:']")  # the flagged check's photo, kept in the log
        after("c")
        after("r", "hat")
        after("o")
        page.wait_for_selector("#review-status:has-text('Nothing left to review')")
        assert page.text_content("#drift-rows tr td:nth-child(2)") == "3"  # today's three checks in the drift table
        checks = httpx.get(f"{running.url}/v1/checks", headers={"X-API-Key": "anna-key"}, timeout=30).json()["checks"]
    finally:
        running.stop()
    trail = {c["id"]: [(r["reviewer"], r["action"], r["category"]) for r in c["reviews"]] for c in checks}
    predicted = {c["id"]: c["predicted"] for c in checks}
    assert trail == {reviewed[0]: [("anna", "confirm", predicted[reviewed[0]])], reviewed[1]: [("anna", "correct", "hat")],
                     reviewed[2]: [("anna", "off_topic", None)]}
    assert all(c["submitted_by"] == "shop" for c in checks)
    subprocess.run([sys.executable, "-m", "vitrina", "review", "export", "--db", str(database), "--out", str(tmp_path / "out")],
                   check=True, capture_output=True, timeout=120)
    with open(tmp_path / "out" / "labels.csv", newline="") as fh:
        labels = [(int(r["check_id"]), r["label"], r["reviewer"]) for r in csv.DictReader(fh)]
    with open(tmp_path / "out" / "off_topic.csv", newline="") as fh:
        off_topic = [int(r["check_id"]) for r in csv.DictReader(fh)]
    assert sorted(labels) == sorted([(reviewed[0], predicted[reviewed[0]], "anna"), (reviewed[1], "hat", "anna")])
    assert off_topic == [reviewed[2]]
