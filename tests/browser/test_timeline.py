"""The workflow page's timeline, on the fixed scene: a lane per host, a bar per run coloured by
state (a retried task's runs each a bar), a running task's bar growing with the clock, and a
click on a bar showing that task's lines alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from playwright.async_api import expect

from tests.browser import scene
from tests.browser.conftest import Site

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

RUNNING = "wf-report-a105"


async def test_the_timeline_draws_runs_by_host_grows_live_and_focuses_a_task(
    browser: Any, site: Site
) -> None:
    async with await psycopg.AsyncConnection.connect(site.database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (task_id, task_name, state, host, root_id, parent_id, created_at,"
            " started_at) VALUES (%s, 'etl.report', 'STARTED', 'worker-3', %s, %s, %s, %s)",
            (RUNNING, scene.ROOT, scene.ROOT, scene.at(7), scene.at(7)),
        )
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    try:
        await page.clock.set_fixed_time(scene.NOW)
        await page.goto(site.url(f"/workflow/{scene.ROOT}/"))
        await page.wait_for_selector("#live.on")
        lanes = page.locator("#tl-lanes .tl-lane")
        await expect(lanes.locator(".tl-host")).to_have_text(["worker-1", "worker-2", "worker-3"])
        bars = page.locator("#tl-lanes .tl-bar")
        await expect(bars).to_have_count(7)  # six runs of five tasks, and the running one
        retried = page.locator(f'.tl-bar[data-task-id="{scene.WF_RETRIED}"]')
        await expect(retried).to_have_count(2)
        runs = await retried.evaluate_all(
            "bs => bs.map(b => [b.closest('.tl-lane').querySelector('.tl-host').textContent,"
            " b.classList.contains('state-retry') ? 'RETRY' : b.classList.contains("
            "'state-success') ? 'SUCCESS' : b.className])"
        )
        assert runs == [["worker-1", "RETRY"], ["worker-2", "SUCCESS"]]
        # The running task's bar reaches now, and grows as the clock moves on.
        live = page.locator(f'.tl-bar.running[data-task-id="{RUNNING}"]')
        await expect(live).to_have_attribute("title", "etl.report · STARTED · 5 min 53 s so far")
        before = await live.evaluate("b => b.getBoundingClientRect().width")
        await page.clock.set_fixed_time(scene.NOW + timedelta(minutes=1))
        await expect(live).to_have_attribute("title", "etl.report · STARTED · 6 min 53 s so far")
        # Every bar shrinks but the running one, which now spans more of the whole.
        assert await live.evaluate("b => b.getBoundingClientRect().width") > before
        # A click on a bar shows that task's lines alone; the chip brings the rest back.
        await page.locator(f'.tl-bar[data-task-id="{scene.WORKFLOW[1]}"]').click()
        shown = page.locator("#log .line:not([hidden]) .msg")
        await expect(shown).to_have_text(
            ["transform-0 chunk 0", "transform-0 chunk 1", "transform-0 chunk 2"]
        )
        await expect(page.locator("#focus-chip")).to_be_visible()
        await page.click("#focus-clear")
        await expect(shown).to_have_count(13)
        await expect(page.locator("#focus-chip")).to_be_hidden()
        # From the keyboard: a bar is a button.
        await page.locator(f'.tl-bar[data-task-id="{scene.WORKFLOW[3]}"]').focus()
        await page.keyboard.press("Enter")
        await expect(shown).to_have_text(["loaded 7 chunks into warehouse"])
    finally:
        await context.close()
