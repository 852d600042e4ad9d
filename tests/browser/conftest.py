"""Headless Chromium (Debian's) driven by Playwright, one browser per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import pytest

from tests.helpers import REQUIRE_BROWSER, required

CHROMIUM = (
    os.environ.get("TASKLOG_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)


def unavailable(reason: str) -> NoReturn:
    if required(REQUIRE_BROWSER):
        pytest.fail(f"{reason}, and {REQUIRE_BROWSER}=1 (CI) does not let browser tests skip")
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    try:
        import playwright.async_api as playwright_api
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
