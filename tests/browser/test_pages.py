"""The pages in headless Chromium, fed by a real worker and collector."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.helpers import ProcessFactory
from tests.integration.api_support import PREFIX, api_settings, running_api

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

#: Set to a directory (e.g. docs) to save the screenshots the README shows.
SCREENSHOTS = os.environ.get("TASKLOG_SCREENSHOT_DIR")


def start_pipeline(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=4)


async def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / name))


async def test_list_page_shows_progress_moving(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    quick = celery_client.send_task("demo.demo_quick_task")
    failing = celery_client.send_task("demo.demo_failing_task")
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        await page.wait_for_selector("#live.on")
        # Whether stored before the page, between the page and its stream, or after: shown.
        await page.wait_for_selector(f'tr[data-task-id="{quick.id}"] .badge.state-success')
        await page.wait_for_selector(f'tr[data-task-id="{failing.id}"] .badge.state-failure')
        task = celery_client.send_task("demo.demo_long_task", kwargs={"duration": 6, "steps": 12})
        bar = f'tr[data-task-id="{task.id}"] .progress'
        # The row appears live, then its progress moves forward.
        await page.wait_for_function(
            "sel => { const b = document.querySelector(sel);"
            " return b && Number(b.dataset.progress) > 0 && Number(b.dataset.progress) < 60; }",
            arg=bar,
            timeout=20_000,
        )
        first = float(await page.get_attribute(bar, "data-progress"))
        await page.wait_for_function(
            "([sel, v]) => Number(document.querySelector(sel).dataset.progress) > v",
            arg=[bar, first],
            timeout=20_000,
        )
        await shot(page, "tasklist.png")
        await page.wait_for_selector(
            f'tr[data-task-id="{task.id}"] .badge.state-success', timeout=20_000
        )


async def test_a_workflows_tasks_come_live_with_their_workflow_link(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    """Rows that arrive live carry the link to their workflow, as the page's own rows do."""
    start_pipeline(procs, database_url, redis_url, spool_dir)
    async with running_api(api_settings(database_url, redis_url)) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        await page.wait_for_selector("#live.on")
        root = celery_client.send_task(
            "demo.demo_workflow", kwargs={"width": 2, "lines": 3, "delay": 0.01}
        ).id
        href = f"{PREFIX}/workflow/{root}/"
        links = page.locator(f'tr .wf-link[href="{href}"]')
        # The root's children (steps and the sum) each get one, and so does the root (the
        # chain's first task), live and when the page is loaded again.
        await page.wait_for_function(
            "href => document.querySelectorAll(`tr .wf-link[href='${href}']`).length >= 5",
            arg=href,
            timeout=30_000,
        )
        assert await page.locator(f'tr[data-task-id="{root}"] .wf-link').count() == 1
        rows = await links.evaluate_all("els => els.map(e => e.closest('tr').dataset.taskId)")
        assert len(rows) == len(set(rows))  # one link per row, however many events came
        await page.reload()
        await page.locator(f'tr[data-task-id="{root}"] .wf-link[href="{href}"]').wait_for()
        await links.first.click()
        await page.wait_for_selector("#workflow")
        assert page.url.endswith(href)


async def test_log_view_live_escaped_and_coloured(
    page: Any,
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, spool_dir)
    async with running_api(api_settings(database_url, redis_url)) as client:
        hostile = celery_client.send_task(
            "demo.print_text",
            kwargs={
                "text": "<script>window.pwned=1</script>\n<img src=x onerror=window.pwned=2>\n"
                "\x1b[31mred alert\x1b[0m and \x1b[1;32mbold green\x1b[0m\n",
            },
        )
        await page.goto(str(client.make_url(f"{PREFIX}/task/{hostile.id}/")))
        await page.wait_for_selector("#live.done", timeout=20_000)
        texts = await page.locator("#log .line .msg").all_text_contents()
        assert texts[:2] == [
            "<script>window.pwned=1</script>",
            "<img src=x onerror=window.pwned=2>",
        ]
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert await page.locator("#log img, #log script").count() == 0
        red = page.locator("#log .msg span", has_text="red alert")
        assert await red.evaluate("el => getComputedStyle(el).color") == "rgb(224, 82, 82)"

        # A task watched while it prints: lines arrive live, each once, in order.
        task = celery_client.send_task(
            "demo.print_lines",
            kwargs={"count": 60, "delay": 0.05, "stderr_every": 7, "text": "\x1b[36mtick\x1b[0m"},
        )
        await page.goto(str(client.make_url(f"{PREFIX}/task/{task.id}/")))
        await page.evaluate("""() => {
            window.latencies = [];
            new MutationObserver(records => { for (const r of records) for (const n of r.addedNodes)
                if (n.dataset && n.dataset.seq) {
                    const ts = n.querySelector('.ts').title;
                    window.latencies.push(Date.now() - Date.parse(ts));
                } }).observe(document.getElementById('log'), {childList: true});
        }""")
        await page.wait_for_selector("#live.on")
        await page.wait_for_function(
            "() => document.querySelectorAll('#log .line').length >= 20", timeout=20_000
        )
        await page.wait_for_selector("#live.done", timeout=30_000)
        # The view holds every line (the DOM only those on screen).
        held = await page.evaluate("window.tasklogView.lines()")
        assert [line["seq"] for line in held] == list(range(1, 61))
        assert sum(line["stream"] == "stderr" for line in held) == 8
        await page.evaluate("document.getElementById('logbox').scrollTop = 0")
        await page.locator("#log .line.stream-stderr").first.wait_for()
        assert await page.locator("#status").text_content() == "SUCCESS"
        latencies = await page.evaluate("window.latencies")
        live = [x for x in latencies if x >= 0]
        if live:
            print(
                f"print-to-browser latency over {len(live)} live lines: median "
                f"{statistics.median(live):.0f} ms, max {max(live):.0f} ms"
            )

        # The filter box hides what does not match.
        await page.fill("#filter", "tick 5")
        # tick 5 and tick 50 to 59 (the view renders on the next frame)
        await expect(page.locator("#log .line:not([hidden])")).to_have_count(11)
        await page.fill("#filter", "")
        await page.evaluate("document.getElementById('logbox').scrollTop = 0")
        await shot(page, "logview.png")


async def test_pages_need_a_login_when_a_token_is_set(
    page: Any, database_url: str, redis_url: str
) -> None:
    settings = api_settings(database_url, redis_url, api_token="browser-secret-0123456789")
    async with running_api(settings) as client:
        await page.goto(str(client.make_url(f"{PREFIX}/diagnostic/")))
        assert "/login" in page.url
        await page.fill("input[name=token]", "wrong")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#login-error")
        await page.fill("input[name=token]", "browser-secret-0123456789")
        await page.click("button[type=submit]")
        await page.wait_for_url(f"**{PREFIX}/diagnostic/")
        assert await page.locator("h1").first.text_content() == "Diagnostic"
        await page.goto(str(client.make_url(f"{PREFIX}/")))
        await page.wait_for_selector("#live.on")  # EventSource is let in by the cookie
        # Logging out drops the cookie: the next page asks for the token again.
        await page.click("form.logout button")
        await page.wait_for_url(f"**{PREFIX}/login")
        await page.goto(str(client.make_url(f"{PREFIX}/diagnostic/")))
        assert "/login" in page.url
