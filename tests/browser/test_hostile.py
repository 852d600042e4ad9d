"""Hostile text in headless Chromium: markup in task names, ids, hosts and exception messages
never runs and shows as text; a malformed ANSI sequence never drops its line."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import expect

from tests.integration.api_support import PREFIX, FakeCollector, api_settings, running_api, sse

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

SCRIPT = "<script>window.pwned=1</script>"
IMG = '<img src=x onerror="window.pwned=2">'
SVG = '"><svg onload=window.pwned=3>'
#: Elements the payloads would add if a page put them into the DOM as HTML.
INJECTED = "script:not([src]):not(#tasklog-constants), img[src=x], svg, [onerror], [onload]"


async def assert_inert(page: Any) -> None:
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.locator(INJECTED).count() == 0


async def test_markup_in_tasks_and_hosts_stays_text_on_the_list_and_diagnostic_pages(
    page: Any, database_url: str, redis_url: str
) -> None:
    settings = api_settings(database_url, redis_url, host=f"api {SCRIPT}")
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start(IMG, name=SCRIPT, host=SVG)
        await fake.start("plain-id", name=IMG, host=SCRIPT)
        await fake.conn.execute(
            "UPDATE tasks SET state = 'FAILURE', exc_type = %s, exc_message = %s,"
            " completed_at = now() WHERE task_id = 'plain-id'",
            (SVG, f"boom {IMG} {SCRIPT}"),
        )
        await fake.conn.execute(
            "INSERT INTO collectors (host, spool_dir, pid, version, started_at, heartbeat_at,"
            " stats) VALUES (%s, %s, 1, %s, now(), now(), %s)",
            (IMG, SCRIPT, SVG, f'{{"note": "{SCRIPT}"}}'),
        )
        async with running_api(settings) as client:
            await page.goto(str(client.make_url(f"{PREFIX}/")))
            await page.wait_for_selector("#live.on")
            # A task that arrives live is built by the page's script, not the template.
            await fake.start("live-one", name=SVG + IMG)
            live_row = page.locator('tr[data-task-id="live-one"]')
            await live_row.wait_for()
            await page.wait_for_function(
                "() => document.querySelector('tr[data-task-id=\"live-one\"] td.name')"
                ".textContent.length > 0"
            )
            assert await live_row.locator("td.name").text_content() == SVG + IMG
            rows = page.locator("#tasks tbody tr")
            names = await rows.locator("td.name").all_text_contents()
            assert {SCRIPT, IMG, SVG + IMG} <= set(names)
            text = await page.locator("#tasks").inner_text()
            assert SVG in text and SCRIPT in text  # hosts, as text
            # The row whose id is markup: the id shows as text, its link is encoded.
            link = await page.evaluate(
                """id => { const row = [...document.querySelectorAll('#tasks tbody tr')]
                    .find(r => r.dataset.taskId === id);
                    const a = row.querySelector('td.mono a');
                    return [a.textContent, a.getAttribute('href')]; }""",
                IMG,
            )
            assert link == [IMG[:12], f"{PREFIX}/task/{quote(IMG, safe='')}/"]
            await assert_inert(page)

            # The failed task's page: the exception message is text.
            await page.goto(str(client.make_url(f"{PREFIX}/task/plain-id/")))
            await page.wait_for_selector("#exception:not([hidden])")
            exception = await page.locator("#exception").text_content()
            assert SVG in exception and IMG in exception and SCRIPT in exception
            await assert_inert(page)

            await page.goto(str(client.make_url(f"{PREFIX}/diagnostic/")))
            body = await page.locator("main").inner_text()
            for payload in (IMG, SCRIPT, SVG, f"api {SCRIPT}"):
                assert payload in body, payload
            await assert_inert(page)


#: (what a task printed, what the log view must show)
MALFORMED = [
    ("a \x1b[38;5m plain", "a  plain"),  # 256-colour without its number
    ("\x1b[38;2;1mrgb cut short", "rgb cut short"),
    ("\x1b[48;5;999mout of range", "out of range"),
    ("\x1b[38;2;1;2;3000mrgb out of range", "rgb out of range"),
    ("cut at the end \x1b[31", "cut at the end "),
    ("bare escape at the end \x1b", "bare escape at the end "),
    ("colon form \x1b[38:5:196mkept", "colon form kept"),
    (
        "title \x1b]0;owned\x07 and clipboard \x1b]52;c;Zm9v\x1b\\ gone",
        "title  and clipboard  gone",
    ),
    ("an OSC cut short \x1b]0;never ends", "an OSC cut short "),
    ("\x1b[;;mempty params", "empty params"),
    ("\x1b[38;5;196mred\x1b[0m after", "red after"),
]


async def test_malformed_ansi_sequences_never_drop_a_line(
    page: Any, database_url: str, redis_url: str
) -> None:
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("ansi")
        await fake.lines("ansi", [printed for printed, _ in MALFORMED])
        await fake.finish("ansi")
        async with running_api(api_settings(database_url, redis_url)) as client:
            await page.goto(str(client.make_url(f"{PREFIX}/task/ansi/")))
            await page.wait_for_selector("#live.done", timeout=20_000)
            shown = await page.locator("#log .line .msg").all_text_contents()
            assert shown == [expected for _, expected in MALFORMED]
            # The view may render its rows again meanwhile (a span read while detached has no
            # computed colour): asked again until it holds.
            red = page.locator("#log .msg span", has_text="red")
            await expect(red).to_have_css("color", "rgb(255, 0, 0)")
            assert not any("\x1b" in line for line in shown)


async def test_a_page_refused_a_stream_tries_again_and_goes_live(
    page: Any, database_url: str, redis_url: str
) -> None:
    """TASKLOG_API_MAX_STREAMS reached: the page's EventSource gets a 503 (browsers do not
    retry that by themselves); the page tries again and is live once a slot is free."""
    settings = api_settings(database_url, redis_url, api_max_streams=1)
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("job")
        async with running_api(settings) as client:
            async with sse(client, f"{PREFIX}/sse/tasks/") as holder:
                await holder.next()  # connected: the one slot is taken
                await page.goto(str(client.make_url(f"{PREFIX}/")))
                await page.wait_for_selector("#live.off")
            # The slot is free once the server sees the holder gone; the page comes back.
            await page.wait_for_selector("#live.on", timeout=20_000)
            await fake.finish("job")
            await page.wait_for_selector('tr[data-task-id="job"] .badge.state-success')
