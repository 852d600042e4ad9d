"""The task list made friendly: relative start times with the exact time on hover, a running
task's duration counting up, the time-range filter, empty states that say what to do, and a
task page opened before its task started that waits for it and follows it."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.async_api import expect

from tests.browser import scene
from tests.browser.conftest import Site
from tests.browser.test_pages import start_pipeline
from tests.helpers import ProcessFactory
from tests.integration.api_support import PREFIX, api_settings, running_api

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_start_times_are_relative_and_a_running_task_counts_up(
    browser: Any, site: Site
) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    try:
        await page.clock.set_fixed_time(scene.NOW)
        await page.goto(site.url("/"))
        running = page.locator(f'tr[data-task-id="{scene.RUNNING}"]')
        await expect(running.locator("td.time")).to_have_text("1 min ago")
        title = await running.locator("td.time").get_attribute("title")
        assert title == "2026-03-02 09:35:00 UTC"
        await expect(running.locator("td.runtime.running")).to_have_text("1 min 0 s")
        await page.clock.set_fixed_time(scene.NOW + timedelta(seconds=5))
        await expect(running.locator("td.runtime")).to_have_text("1 min 5 s")
        failed = page.locator(f'tr[data-task-id="{scene.FAILED}"]')
        await expect(failed.locator("td.runtime")).to_have_text("4.20s")  # over: its runtime
        assert await failed.locator("td.runtime.running").count() == 0
    finally:
        await context.close()


async def test_the_time_range_filter_and_its_empty_state(browser: Any, site: Site) -> None:
    fresh = f"fresh-{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(site.database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tasks (task_id, task_name, state, started_at) VALUES"
            " (%s, 'new.one', 'STARTED', now())",
            (fresh,),
        )
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(site.url("/"))
        await page.select_option("select[name=range]", "15m")
        await page.click("form.filters button[type=submit]")
        await page.wait_for_url("**range=15m**")
        ids = await page.locator("#tasks tbody tr[data-task-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.taskId)"
        )
        assert ids == [fresh]  # the scene's tasks are months old
        await page.fill("input[name=name]", "no.such.task")
        await page.click("form.filters button[type=submit]")
        empty = page.locator("#tasks tr.empty")
        await expect(empty).to_contain_text("No task matches these filters")
        await empty.locator("a").click()
        await page.wait_for_url(site.url("/"))
        await expect(page.locator(f'tr[data-task-id="{scene.HUGE}"]')).to_have_count(1)
    finally:
        await context.close()


async def test_an_empty_list_says_how_tasks_get_there(
    page: Any, database_url: str, redis_url: str
) -> None:
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        empty = page.locator("#tasks tr.empty")
        await expect(empty).to_contain_text("No tasks yet.")
        await expect(empty).to_contain_text("capture_shim.install(app)")


async def test_a_task_page_opened_before_its_task_waits_and_follows_it(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    task_id = f"not-yet-{secrets.token_hex(4)}"
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/task/{task_id}/")))
        await expect(page.locator("#waiting")).to_contain_text("Waiting for this task")
        await expect(page.locator("#live.on")).to_have_count(1)
        celery_client.send_task(
            "demo.print_lines", kwargs={"count": 5, "text": "followed"}, task_id=task_id
        )
        await expect(page.locator("#status")).to_have_text("SUCCESS", timeout=30_000)
        await expect(page.locator("#waiting")).to_have_count(0)
        await expect(page.locator("#log .line .msg")).to_have_count(5)
        assert await page.locator("#task-name").text_content() == "demo.print_lines"
