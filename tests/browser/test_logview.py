"""The log view as CI log viewers have it, on the fixed scene (tests/browser/scene.py) and, for
groups written by a real task, on a real worker: line links, groups, find, first error, wrap,
time since start, the first and last line of a huge task, the keyboard, the dark theme."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser import scene
from tests.browser.conftest import Site
from tests.browser.test_pages import start_pipeline
from tests.helpers import ProcessFactory
from tests.integration.api_support import PREFIX, api_settings, running_api

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

ON_SCREEN = """sel => { const r = document.querySelector(sel);
  if (!r) return false;
  const a = r.getBoundingClientRect();
  const b = document.getElementById("logbox").getBoundingClientRect();
  return a.top >= b.top && a.bottom <= b.bottom; }"""


async def on_screen(page: Any, selector: str) -> None:
    await page.wait_for_function(ON_SCREEN, arg=selector, timeout=10_000)


async def open_task(browser: Any, site: Site, task_id: str, hash_: str = "", **extra: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1400, "height": 900}, **extra)
    page = await context.new_page()
    await page.goto(site.url(f"/task/{task_id}/{hash_}"))
    await page.wait_for_selector("#live.done", timeout=30_000)
    return page


async def test_line_links_highlight_a_line_or_a_range_and_copy_in_one_click(
    browser: Any, site: Site
) -> None:
    page = await open_task(
        browser, site, scene.HUGE, "#L40-L52", permissions=["clipboard-read", "clipboard-write"]
    )
    try:
        await on_screen(page, "#L40")
        await on_screen(page, "#L52")
        targets = await page.locator("#log .line.target").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.seq))"
        )
        assert targets == list(range(40, 53))
        assert not await page.is_checked("#follow")
        # A click on a number selects its line, Shift-click stretches it to a range.
        await page.click("#L60 a.seq")
        await expect(page).to_have_url(f"{site.url(f'/task/{scene.HUGE}/')}#L60")
        await page.click("#L63 a.seq", modifiers=["Shift"])
        await expect(page).to_have_url(f"{site.url(f'/task/{scene.HUGE}/')}#L60-L63")
        await expect(page.locator("#log .line.target")).to_have_count(4)
        # One click on a line's copy button copies its link.
        await page.hover("#L61")
        await page.click("#L61 button.copy")
        await expect(page.locator("#copy-link")).to_have_text("link copied")
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == site.url(f"/task/{scene.HUGE}/#L61")
    finally:
        await page.context.close()


async def test_groups_fold_with_their_size_and_duration(browser: Any, site: Site) -> None:
    page = await open_task(browser, site, scene.LOGGING)
    try:
        heads = page.locator("#log .group-head")
        await expect(heads).to_have_count(2)
        assert await heads.locator(".fold").all_text_contents() == ["Fetch orders", "Validate"]
        assert await heads.locator(".gmeta").all_text_contents() == [
            "3 lines · 0.71 s",
            "2 lines · 0.11 s",
        ]
        # Folded: the group's lines and the end marker are not shown.
        assert await page.locator("#L2").count() == 0
        assert await page.locator("#L5").count() == 0
        fold = page.locator("#L1 button.fold")
        await fold.click()
        await expect(page.locator("#L2")).to_be_visible()
        await expect(page.locator("#L1 button.fold")).to_have_attribute("aria-expanded", "true")
        assert await page.locator("#L5").count() == 0  # ::endgroup:: is never a row
        # From the keyboard: the fold button keeps the focus and Enter folds it again.
        await page.locator("#L1 button.fold").focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#L2")).to_have_count(0)
        await expect(page.locator("#L1 button.fold")).to_be_focused()
    finally:
        await page.context.close()


async def test_find_counts_matches_and_steps_through_them(browser: Any, site: Site) -> None:
    page = await open_task(browser, site, scene.HUGE)
    try:
        await page.fill("#find", "product 01234")
        await expect(page.locator("#find-count")).to_have_text("1 / 10")
        await on_screen(page, "#L12340.current")
        await page.press("#find", "Enter")
        await expect(page.locator("#find-count")).to_have_text("2 / 10")
        await on_screen(page, "#L12341.current")
        await page.press("#find", "Shift+Enter")
        await page.click("#find-prev")
        await expect(page.locator("#find-count")).to_have_text("10 / 10")
        await on_screen(page, "#L12349.current")
        await page.fill("#find", "no such text")
        await expect(page.locator("#find-count")).to_have_text("no match")
    finally:
        await page.context.close()


async def test_first_error_jumps_to_the_first_stderr_line(browser: Any, site: Site) -> None:
    page = await open_task(browser, site, scene.HUGE)
    try:
        await page.click("#first-error")
        error = f"#L{scene.HUGE_LINES // 2}"
        await on_screen(page, f"{error}.target.stream-stderr")
        assert "ERROR: price missing" in await page.text_content(f"{error} .msg")
    finally:
        await page.context.close()


async def test_the_first_and_last_line_of_a_huge_task_are_reachable_from_the_keyboard(
    browser: Any, site: Site
) -> None:
    page = await open_task(browser, site, scene.HUGE)
    try:
        await on_screen(page, f"#L{scene.HUGE_LINES}")  # followed to the end
        assert await page.evaluate("window.tasklogView.rendered()") < 200  # not 20,000 rows
        await page.focus("#logbox")
        await page.keyboard.press("Home")
        await on_screen(page, "#L1")
        await expect(page.locator("#follow")).not_to_be_checked()
        # Pressed at once, before any scroll could end: each key still goes all the way.
        for key in ("End", "Home", "End"):
            await page.keyboard.press(key)
        await on_screen(page, f"#L{scene.HUGE_LINES}")
        await expect(page.locator("#follow")).to_be_checked()  # End follows again
        # A line number is a link: Enter on it selects the line.
        await page.focus(f"#L{scene.HUGE_LINES - 3} a.seq")
        await page.keyboard.press("Enter")
        await expect(page.locator(f"#L{scene.HUGE_LINES - 3}")).to_have_class(
            "line stream-stdout target"
        )
    finally:
        await page.context.close()


async def test_wrap_off_keeps_a_long_line_on_one_row_inside_the_log(
    browser: Any, site: Site
) -> None:
    page = await open_task(browser, site, scene.LOGGING)
    try:
        long_row = page.locator("#L11")
        assert (await long_row.bounding_box())["height"] > 40  # wrapped
        await page.uncheck("#wrap")
        await page.wait_for_function(
            "() => document.getElementById('L11').getBoundingClientRect().height === 18"
        )
        sizes = await page.evaluate(
            "() => { const b = document.getElementById('logbox');"
            " return [b.scrollWidth > b.clientWidth,"
            " document.documentElement.scrollWidth <= window.innerWidth]; }"
        )
        assert sizes == [True, True]  # the log scrolls sideways, the page does not
    finally:
        await page.context.close()


async def test_time_since_start_and_the_dark_theme(browser: Any, site: Site) -> None:
    page = await open_task(browser, site, scene.LOGGING, color_scheme="dark")
    try:
        assert await page.text_content("#L10 .ts") == "09:33:01.200"
        await page.select_option("#time-mode", "relative")
        await expect(page.locator("#L10 .ts")).to_have_text("+1.200s")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"  # the dark theme's
    finally:
        await page.context.close()


async def test_a_failed_task_opens_the_group_of_its_last_line(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    """Groups written by a real task with capture_shim.group, watched live until it fails."""
    start_pipeline(procs, database_url, redis_url, spool_dir)
    async with running_api(api_settings(database_url, redis_url)) as client:
        task = celery_client.send_task("demo.grouped_steps", kwargs={"steps": 3, "fail": True})
        await page.goto(str(client.make_url(f"{PREFIX}/task/{task.id}/")))
        await page.wait_for_selector("#live.done", timeout=30_000)
        await expect(page.locator("#status")).to_have_text("FAILURE")
        heads = page.locator("#log .group-head")
        await expect(heads).to_have_count(3)
        expanded = await heads.locator(".fold").evaluate_all(
            "bs => bs.map(b => b.textContent + '=' + b.getAttribute('aria-expanded'))"
        )
        assert expanded == ["step 1=false", "step 2=false", "step 3=true"]
        await expect(page.locator("#log .line.in-group .msg")).to_have_text(["step 3: working"])


async def test_search_results_show_text_without_terminal_escapes(browser: Any, site: Site) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(site.url("/search/?q=611+orders"))
        message = page.locator("#matches tr.match td.msg")
        await expect(message).to_have_text(["✔ 611 orders valid, 1 fixed"])
        await expect(message.locator("mark")).to_have_text(["611 orders"])
    finally:
        await context.close()
