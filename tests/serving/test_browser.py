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
