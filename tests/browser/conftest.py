"""Headless Chromium (Debian's) driven by Playwright, one browser per session."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql

from tests.browser import scene
from tests.helpers import REQUIRE_BROWSER, required, with_database
from tests.integration.api_support import PREFIX, api_settings, running_api

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


# -- the fixed scene (tests/browser/scene.py), served once per module --------------------------


@dataclass
class Site:
    """The API serving the scene: `url(path)` of a page, and a login-guarded twin."""

    base: str
    guarded: str
    database_url: str

    def url(self, path: str) -> str:
        return self.base + PREFIX + path


@pytest.fixture(scope="module")
async def site(pg_server_url: str, template_database: str) -> AsyncIterator[Site]:
    """A database of its own holding the scene, and the API on it (Postgres polled, no Redis:
    nothing moves unless a test moves it)."""
    name = f"tl_scene_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    url = with_database(pg_server_url, name)
    try:
        await scene.build(url)
        async with (
            running_api(api_settings(url, None)) as client,
            running_api(api_settings(url, None, api_token=LOGIN_TOKEN)) as guarded,
        ):
            yield Site(str(client.make_url("")), str(guarded.make_url("")) + PREFIX, url)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


#: The token of the scene's guarded API (its login page).
LOGIN_TOKEN = "scene-token-0123456789"
