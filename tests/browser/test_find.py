"""Search, tracebacks, runs and workflows in headless Chromium, fed by a real worker and
collector."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_pages import shot, start_pipeline
from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def finished(database_url: str, ids: list[str]) -> None:
    def done() -> bool:
        rows = pg_rows(
            database_url,
            "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND tasklog_finished(state)",
            (ids,),
        )
        return bool(rows[0][0] == len(ids))

    await asyncio.to_thread(wait_for, done, 60, 0.1, "the tasks finished")


async def test_search_page_finds_highlights_and_links_to_the_line(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    noise = [
        celery_client.send_task(
            "demo.print_lines", kwargs={"count": 80, "text": f"order {i} shipped"}
        ).id
        for i in range(8)
    ]
    marked = celery_client.send_task(
        "demo.print_lines", kwargs={"count": 120, "text": "payment <b>retry</b>"}
    ).id
    await finished(database_url, [*noise, marked])
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        # The nav's search box leads to the search page.
        await page.fill("header .navsearch input[name=q]", "<b>retry</b> 57")
        await page.press("header .navsearch input[name=q]", "Enter")
        await page.wait_for_selector("#matches")
        rows = page.locator("#matches tr.match")
        assert await rows.count() == 1
        assert await page.locator("#matches mark").all_text_contents() == ["<b>retry</b> 57"]
        assert await page.locator("#matches b").count() == 0, "log text is never markup"
        # A common phrase: newest first, a page of 50 and a link to older matches.
        await page.goto(str(client.make_url(f"{PREFIX}/search/?q=ORDER+3+shipped")))
        assert await rows.count() == 50
        marks = await page.locator("#matches mark").all_text_contents()
        assert set(marks) == {"order 3 shipped"}
        await page.click("#more")
        await page.wait_for_selector("#matches")
        assert await rows.count() == 30 and await page.locator("#more").count() == 0
        # A regex, and a pattern Postgres refuses: said on the page, in one line.
        await page.goto(str(client.make_url(f"{PREFIX}/search/?q=retry.*+1[01]$&regex=1")))
        assert await rows.count() == 2  # "retry</b> 10" and "retry</b> 11"
        await page.goto(str(client.make_url(f"{PREFIX}/search/?q=(&regex=1")))
        error = await page.text_content("#search-error")
        assert error and "parentheses" in error
        # Each match links to its line in the log view, highlighted among its neighbours.
        await page.goto(str(client.make_url(f"{PREFIX}/search/?q=retry%3C%2Fb%3E+5")))
        await shot(page, "search.png")
        link = page.locator('#matches tr.match[data-seq="55"] a').first
        await link.click()
        await page.wait_for_selector("#L55.target")
        assert page.url.endswith(f"/task/{marked}/#L55")
        assert await page.is_checked("#follow") is False
        visible = await page.evaluate(
            """() => { const log = document.getElementById("logbox");
                 const r = document.getElementById("L55").getBoundingClientRect();
                 const b = log.getBoundingClientRect();
                 return r.top >= b.top && r.bottom <= b.bottom; }"""
        )
        assert visible
        assert await page.locator("#L54").is_visible() and await page.locator("#L56").is_visible()


async def test_log_view_traceback_and_runs(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    failing = celery_client.send_task("demo.demo_failing_task").id
    retried = celery_client.send_task("demo.retry_task").id
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/task/{failing}/")))
        await page.wait_for_selector("#live.done", timeout=20_000)
        await page.wait_for_selector("#traceback:not([hidden])")
        assert await page.text_content("#exception") == "Exception: Demo failure"
        own = await page.locator("#frames .frame.own").all_text_contents()
        lib = await page.locator("#frames .frame.lib").all_text_contents()
        assert any(
            "tasklog/demo/tasks.py" in f and 'raise Exception("Demo failure")' in f for f in own
        )
        assert lib and all("site-packages" in f for f in lib)
        weight = await page.locator("#frames .frame.own").first.evaluate(
            "el => getComputedStyle(el).fontWeight"
        )
        colour = "el => getComputedStyle(el).color"
        lib_colour = await page.locator("#frames .frame.lib").first.evaluate(colour)
        own_colour = await page.locator("#frames .frame.own").first.evaluate(colour)
        # Library frames are muted (still readable: axe checks the contrast in test_screens).
        assert int(weight) >= 600 and lib_colour != own_colour
        # Collapsible: a click on its summary folds it.
        assert await page.locator("#traceback").evaluate("el => el.open")
        await page.click("#traceback summary")
        assert not await page.locator("#traceback").evaluate("el => el.open")
        assert not await page.locator("#frames").is_visible()

        await page.goto(str(client.make_url(f"{PREFIX}/task/{retried}/")))
        await page.wait_for_selector("#live.done", timeout=20_000)
        await page.wait_for_selector(".run-head >> nth=1")
        order = await page.evaluate(
            """() => [...document.getElementById("log").children].map(
                 el => el.classList.contains("run-head") ? "H:" + el.textContent
                       : el.querySelector(".msg").textContent)"""
        )
        assert len(order) == 4
        assert order[0].startswith("H:Run 1 of 2 · ") and "RETRY" in order[0]
        assert order[1] == "attempt 0"
        assert order[2].startswith("H:Run 2 of 2 · ") and "SUCCESS" in order[2]
        assert order[3] == "attempt 1"
        # The stream filter leaves the headers alone.
        await page.fill("#filter", "attempt 1")
        assert await page.locator(".run-head:visible").count() == 2


async def test_workflow_page_follows_live_and_resumes(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    lines, width = 30, 3
    total = 1 + (width + 1) * lines + 2
    async with running_api(api_settings(database_url, redis_url)) as client:
        root = celery_client.send_task(
            "demo.demo_workflow", kwargs={"width": width, "lines": lines, "delay": 0.05}
        ).id
        await page.goto(str(client.make_url(f"{PREFIX}/workflow/{root}/")))
        await page.wait_for_selector("#live.on")
        # Lines arrive while the tasks run: drop the connection mid-way, then resume.
        await page.wait_for_function(
            "() => document.querySelectorAll('#log .line').length >= 20", timeout=30_000
        )
        await page.evaluate("window.tasklogWorkflow.drop()")
        shown = await page.evaluate("() => document.querySelectorAll('#log .line').length")

        def stored_count() -> int:
            rows = pg_rows(
                database_url,
                "SELECT count(*) FROM lines l JOIN tasks t USING (task_id) WHERE t.root_id = %s",
                (root,),
            )
            return int(rows[0][0])

        # Lines keep being stored meanwhile (what the resume must fetch), and none reaches the
        # dropped page.
        await asyncio.to_thread(
            wait_for, lambda: stored_count() >= shown + 10, 30, 0.05, "lines stored while away"
        )
        assert await page.evaluate("() => document.querySelectorAll('#log .line').length") == shown
        assert shown < total
        await page.evaluate("window.tasklogWorkflow.resume()")
        await page.wait_for_function(
            f"() => document.querySelectorAll('#log .line').length >= {total}", timeout=60_000
        )
        await page.wait_for_function(
            f"() => document.querySelectorAll('#tree .badge.state-success').length === {width + 3}",
            timeout=30_000,
        )
        seen = await page.evaluate(
            """() => [...document.querySelectorAll('#log .line')].map(
                 el => el.dataset.taskId + ':' + el.dataset.seq)"""
        )
        stored = pg_rows(
            database_url,
            "SELECT l.task_id || ':' || l.seq FROM lines l JOIN tasks t USING (task_id)"
            " WHERE t.root_id = %s",
            (root,),
        )
        assert len(seen) == len(set(seen)) == total
        assert set(seen) == {r[0] for r in stored}
        # The tree: root → extract → three transforms; load hangs under the workflow too.
        assert await page.locator("#tree li").count() == width + 3
        extract = page.locator(f'#tree li[data-task-id="{root}"] > ul > li')
        assert await extract.count() == 1
        assert await extract.locator("> ul > li").count() >= width
        names = await page.locator("#tree .name").all_text_contents()
        assert sum(n.startswith("demo.wf_step") for n in names) == width + 1
        await shot(page, "workflow.png")
        # The task list and the log view link a task to its workflow.
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        links = page.locator(f'#tasks a.wf-link[href="{PREFIX}/workflow/{root}/"]')
        assert await links.count() == width + 3  # every task of it, the root too
        await page.goto(str(client.make_url(f"{PREFIX}/workflow/{root}/")))
        await page.wait_for_selector(f'#log .line[data-task-id="{root}"] a.tid')
        await page.click(f'#log .line[data-task-id="{root}"] a.tid')
        await page.wait_for_selector("#workflow-link")
        assert await page.get_attribute("#workflow-link", "href") == f"{PREFIX}/workflow/{root}/"
