"""Every page as a person sees it, at a desktop's 1400x900 and a phone's 390x844: the layout
(no sideways scroll, log rows one text line high unless they wrap), no console error and no
failed request, no serious accessibility violation (axe-core), and the look itself, compared
pixel by pixel with the committed screenshots in docs/screenshots.

After changing how a page looks, look at the new screenshots, then refresh the baselines:

    TASKLOG_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/browser/test_screens.py

The pages show the fixed scene of tests/browser/scene.py with the browser's clock fixed at
`scene.NOW`, so nothing but a change of the pages (or of the machine's fonts) moves a pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from tests.browser import scene
from tests.browser.conftest import Site

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

BASELINES = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
UPDATE = os.environ.get("TASKLOG_UPDATE_SCREENSHOTS") == "1"
SIZES = {"desktop": (1400, 900), "phone": (390, 844)}
#: A pixel differs when a channel moves by more than this (anti-aliasing moves a few).
CHANNEL_TOLERANCE = 24
#: At most this share of the pixels may differ (a glyph's hinting, not a moved element).
PIXEL_TOLERANCE = 0.002
#: axe-core, as the axe-playwright-python package ships it.
AXE = Path(str(__import__("axe_playwright_python").__file__)).parent / "axe.min.js"


@dataclass(frozen=True)
class Screen:
    name: str
    path: str
    ready: str  # a selector present once the page has settled
    mask: tuple[str, ...] = ()  # what moves on its own: ages, versions, settings, ports
    guarded: bool = False


SCREENS = [
    Screen("list", "/", "#live.on"),
    Screen("task-running", f"/task/{scene.RUNNING}/", "#live.on"),
    Screen("task-failed", f"/task/{scene.FAILED}/", "#live.done"),
    Screen("task-retried", f"/task/{scene.RETRIED}/", "#live.done"),
    Screen("task-groups", f"/task/{scene.LOGGING}/", "#live.done"),
    Screen("task-huge", f"/task/{scene.HUGE}/", "#live.done"),
    Screen("search", "/search/?q=orders", "#matches"),
    Screen("workflow", f"/workflow/{scene.ROOT}/", "#live.on"),
    Screen(
        "diagnostic",
        "/diagnostic/",
        "#collectors",
        mask=("#postgres p", ".stat-heartbeat td", "#versions dl", "#settings dl"),
    ),
    Screen("login", "/login", "form.login", guarded=True),
]


class Watch:
    """What went wrong on a page: console errors, page errors, failed or refused requests."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", self.console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self.failed)
        page.on("response", self.response)

    def console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def failed(self, request: Any) -> None:
        # The page closes a finished task's stream itself (and the test closes the page): an
        # aborted event stream is no failure; one refused is a response of 400 or more.
        aborted = request.failure == "net::ERR_ABORTED" and request.resource_type == "eventsource"
        if not self.closing and not aborted:
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status} for {response.url}")

    closing = False


async def open_screen(browser: Any, site: Site, screen: Screen, size: str) -> tuple[Any, Watch]:
    width, height = SIZES[size]
    context = await browser.new_context(
        viewport={"width": width, "height": height}, bypass_csp=True, color_scheme="light"
    )
    page = await context.new_page()
    watch = Watch(page)
    await page.clock.set_fixed_time(scene.NOW)
    if screen.name == "diagnostic":  # the collector is alive (its age is masked)
        await scene.heartbeat(site.database_url)
    base = site.guarded if screen.guarded else site.url("")
    await page.goto(base + screen.path)
    await page.locator(screen.ready).first.wait_for(timeout=30_000)
    if screen.name == "task-huge":
        await page.wait_for_function(
            f"() => document.getElementById('count').textContent === '{scene.HUGE_LINES} lines'"
        )
    # A followed log is pinned to its end as its rows are measured, a frame or more after
    # the stream opened: the look is compared once the page has stopped moving.
    await page.wait_for_function(SETTLED, polling=SETTLE_POLL_MS, timeout=30_000)
    return page, watch


SETTLE_POLL_MS = 250
#: True when the scroll positions, the rows on screen and the line count are those of the
#: previous call, `SETTLE_POLL_MS` before.
SETTLED = """() => {
  const boxes = ["logbox", "log"].map((id) => document.getElementById(id));
  const state = JSON.stringify([
    window.scrollY, document.documentElement.scrollHeight,
    boxes.map((box) => box && [box.scrollTop, box.scrollHeight]),
    Array.from(document.querySelectorAll("#log > *"), (row) => row.textContent.slice(0, 12)),
    document.getElementById("count")?.textContent,
  ]);
  const settled = window.__tasklogScreenState === state;
  window.__tasklogScreenState = state;
  return settled;
}"""


async def close(page: Any, watch: Watch) -> None:
    watch.closing = True
    await page.context.close()


LAYOUT = """() => {
  const problems = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth)
    problems.push(`the page scrolls sideways: ${doc.scrollWidth} px wide in ${window.innerWidth}`);
  // Each log row is one text line high, unless its text is too long for one line.
  const probe = document.createElement("span");
  probe.style.cssText = "white-space: pre; position: absolute; visibility: hidden";
  document.body.appendChild(probe);
  for (const row of document.querySelectorAll("#log .line")) {
    const msg = row.querySelector(".msg");
    const style = getComputedStyle(row);
    const lineHeight = parseFloat(style.lineHeight);
    probe.style.font = getComputedStyle(msg).font;
    probe.textContent = msg.textContent;
    const box = getComputedStyle(msg);
    const room = msg.getBoundingClientRect().width - parseFloat(box.paddingLeft)
      - parseFloat(box.paddingRight);
    const fits = probe.getBoundingClientRect().width <= room + 1;
    const height = row.getBoundingClientRect().height;
    if (fits && height > lineHeight * 1.5)
      problems.push(`row ${row.dataset.seq} is ${height} px high for one line of ${lineHeight}`);
    if (!fits && height < lineHeight * 1.5 && !row.closest(".nowrap"))
      problems.push(`row ${row.dataset.seq} does not wrap its long line`);
  }
  probe.remove();
  return problems;
}"""


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("screen", SCREENS, ids=[s.name for s in SCREENS])
async def test_page_layout_look_and_accessibility(
    browser: Any, site: Site, screen: Screen, size: str
) -> None:
    page, watch = await open_screen(browser, site, screen, size)
    try:
        assert await page.evaluate(LAYOUT) == []
        await compare(page, screen, size)
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate(
            "() => axe.run(document, {resultTypes: ['violations']})"
            ".then(r => r.violations.filter(v => ['serious', 'critical'].includes(v.impact))"
            ".map(v => v.id + ': ' + v.help + ' at ' +"
            " v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')))"
        )
        assert result == [], "\n".join(result)
        assert watch.problems == []
    finally:
        await close(page, watch)


async def compare(page: Any, screen: Screen, size: str) -> None:
    """The page against its baseline; with TASKLOG_UPDATE_SCREENSHOTS=1, the new baseline."""
    baseline = BASELINES / f"{screen.name}-{size}.png"
    shot = await page.screenshot(
        animations="disabled",
        caret="hide",
        mask=[page.locator(selector) for selector in screen.mask],
        mask_color="#c8ccd4",
    )
    if UPDATE:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        baseline.write_bytes(shot)
        return
    assert baseline.exists(), f"no baseline {baseline}: make it with TASKLOG_UPDATE_SCREENSHOTS=1"
    actual_path = baseline.with_name(baseline.stem + ".actual.png")
    actual_path.write_bytes(shot)
    share = differing_share(Image.open(baseline), Image.open(actual_path))
    assert share <= PIXEL_TOLERANCE, (
        f"{screen.name} at {size} differs from {baseline.name} in {share:.2%} of its pixels"
        f" (see {actual_path.name}; after looking, refresh with TASKLOG_UPDATE_SCREENSHOTS=1)"
    )
    actual_path.unlink()


def differing_share(expected: Image.Image, actual: Image.Image) -> float:
    """The share of pixels where a channel differs by more than `CHANNEL_TOLERANCE`."""
    if expected.size != actual.size:
        return 1.0
    red, green, blue = ImageChops.difference(expected.convert("RGB"), actual.convert("RGB")).split()
    most = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    moved = most.point(lambda v: 255 if v > CHANNEL_TOLERANCE else 0)
    histogram = moved.histogram()
    return histogram[255] / (expected.size[0] * expected.size[1])
