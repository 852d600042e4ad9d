"""Benchmark: the log view of a huge task (100,000 stored lines) in headless Chromium.

One task of ``--lines`` lines is stored in a fresh database and ``tasklog api`` serves it. In
Chromium (Playwright, /usr/bin/chromium), each run opens the task's page and times:

- load: from navigation to the last line counted (the whole replay over SSE);
- fling: the log box flung from top to bottom in 300 steps, one per animation frame (every
  frame shows rows never seen), the frames timed (a frame longer than 50 ms is a visible stall);
- steady scroll: 120 px a frame for 300 frames, as a wheel or a drag scrolls;
- rows in the DOM once loaded.

The baseline, in the same run and the same browser: the same lines in the same page styles, every
line a row of the DOM (the log view before it rendered only the rows on screen), built and
scrolled the same way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    python,
    row,
    title,
    verdict,
    wait_for,
    workdir,
)

TASK = "bench-logview-huge"
#: A scroll frame above this is a stall a reader sees.
STALL_MS = 50.0
TARGET_P95_FRAME_MS = 34.0

_LINES = """
    INSERT INTO lines (task_id, seq, ts, stream, level, message)
    SELECT %(task)s, i, now() - interval '1 hour' + i * interval '1 millisecond',
           CASE WHEN i %% 50 = 0 THEN 'stderr' ELSE 'stdout' END, NULL,
           'exported product ' || lpad(i::text, 6, '0') || ' to warehouse ' || (i %% 7)
           || CASE WHEN i %% 97 = 0 THEN ' ' || repeat('long detail ', 30) ELSE '' END
    FROM generate_series(1, %(n)s) AS i
"""

#: Scrolls the log box from top to bottom in `FRAMES` steps, one per animation frame (a fling
#: through the whole log); resolves to the frame times.
FRAMES = 300
#: A steady scroll (a wheel or a drag): this many px per frame, for `FRAMES` frames.
WHEEL_PX = 120
_SCROLL = """async ([boxId, steps, px]) => {
  const box = document.getElementById(boxId);
  box.scrollTop = 0;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const frames = [];
  const step = px || (box.scrollHeight - box.clientHeight) / steps;
  let last = performance.now();
  for (let i = 1; i <= steps; i++) {
    box.scrollTop = Math.round(i * step);
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now();
    frames.push(now - last);
    last = now;
  }
  return frames;
}"""

#: The baseline page: every line a row of the DOM, in the log view's own styles.
_EVERY_ROW = """(lines) => {
  const t0 = performance.now();
  const box = document.getElementById("logbox");
  const log = document.getElementById("log");
  log.style.height = "auto"; log.style.paddingTop = "0px";
  const frag = document.createDocumentFragment();
  for (const l of lines) {
    const row = document.createElement("div");
    row.className = "line stream-" + l[1];
    for (const [cls, text] of [["seq", l[0]], ["ts", l[2]], ["tag", l[1]], ["msg", l[3]]]) {
      const s = document.createElement("span"); s.className = cls; s.textContent = text;
      row.appendChild(s);
    }
    frag.appendChild(row);
  }
  log.replaceChildren(frag);
  box.scrollTop = box.scrollHeight;  // forces the layout of every row, as following did
  return performance.now() - t0;
}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=100_000, help="lines of the huge task")
    p.add_argument("--runs", type=int, default=3, help="page loads of each kind")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium to drive")


def run(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    from tasklog.demo.embedded import free_port

    title(f"Log view: a task of {args.lines:,} lines in Chromium")
    dbs = Databases(args.database_url)
    try:
        url = dbs.fresh()
        _store(url, args.lines)
        with workdir() as tmp, children() as procs, sync_playwright() as pw:
            port = free_port()
            env = {"TASKLOG_DATABASE_URL": url, "TASKLOG_API_PORT": str(port)}
            env["TASKLOG_LOG_LEVEL"] = "warning"
            api = Child("api", [python(), "-m", "tasklog", "api"], env, Path(tmp))
            procs.append(api)
            wait_for(lambda: _up(port), 60, "the API to answer", api)
            browser = pw.chromium.launch(
                executable_path=args.chromium,
                args=["--no-sandbox", "--disable-background-networking"],
            )
            page_url = f"http://127.0.0.1:{port}/tasklog/task/{TASK}/"
            virtual = [_virtual(browser, page_url, args.lines) for _ in range(args.runs)]
            every = [_every_row(browser, page_url) for _ in range(args.runs)]
            browser.close()
    finally:
        dbs.close()
    _report(virtual, every)


def _store(url: str, n: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lines_bench PARTITION OF lines DEFAULT")
        conn.execute(
            "INSERT INTO tasks (task_id, task_name, state, host, started_at, completed_at,"
            " runtime, line_count, last_seq, progress) VALUES (%s, 'bench.huge', 'SUCCESS',"
            " 'bench', now() - interval '1 hour', now(), 3600, %s, %s, 100)",
            (TASK, n, n),
        )
        conn.execute(_LINES.encode(), {"task": TASK, "n": n})


def _up(port: int) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/tasklog/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _context(browser: Any) -> Any:
    return browser.new_context(viewport={"width": 1400, "height": 900})


def _virtual(browser: Any, url: str, n: int) -> dict[str, Any]:
    context = _context(browser)
    page = context.new_page()
    start = time.monotonic()
    page.goto(url)
    page.wait_for_function(
        f"() => document.getElementById('count').textContent === '{n} lines'", timeout=600_000
    )
    load = (time.monotonic() - start) * 1000
    rows = page.evaluate("window.tasklogView.rendered()")
    frames = page.evaluate(_SCROLL, ["logbox", FRAMES, 0])
    steady = page.evaluate(_SCROLL, ["logbox", FRAMES, WHEEL_PX])
    context.close()
    return {"load": load, "frames": frames, "steady": steady, "rows": rows}


def _every_row(browser: Any, url: str) -> dict[str, Any]:
    """The same lines, every one a row: fetched from the page's own API, then built."""
    context = _context(browser)
    page = context.new_page()
    # The page without its script (the view would render too): its styles and its boxes.
    page.route(
        "**/static/task.js", lambda route: route.fulfill(body="", content_type="text/javascript")
    )
    page.goto(url)
    start = time.monotonic()
    lines = page.evaluate(
        """async (task) => {
          const out = []; let after = 0;
          for (;;) {
            const q = `?limit=5000&after_seq=${after}`;
            const r = await fetch(`/tasklog/api/tasks/${task}/${q}`);
            const page = await r.json();
            for (const l of page.logs)
              out.push([l.id, l.stream, l.timestamp.slice(11, 23), l.message]);
            if (!page.next) return out;
            after = out[out.length - 1][0];
          }
        }""",
        TASK,
    )
    page.evaluate(_EVERY_ROW, lines)
    load = (time.monotonic() - start) * 1000
    rows = page.evaluate("document.getElementById('log').children.length")
    frames = page.evaluate(_SCROLL, ["logbox", FRAMES, 0])
    steady = page.evaluate(_SCROLL, ["logbox", FRAMES, WHEEL_PX])
    context.close()
    return {"load": load, "frames": frames, "steady": steady, "rows": rows}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _report(virtual: list[dict[str, Any]], every: list[dict[str, Any]]) -> None:
    figures: dict[str, tuple[Figure, Figure]] = {}
    for key, unit, pick in (
        ("load (all lines shown)", "ms", lambda r: r["load"]),
        ("fling frame p50", "ms", lambda r: _p(r["frames"], 50)),
        ("fling frame p95", "ms", lambda r: _p(r["frames"], 95)),
        ("fling frame max", "ms", lambda r: max(r["frames"])),
        ("fling stalls (> 50 ms)", "%", lambda r: 100 * _stalls(r["frames"])),
        ("steady scroll frame p50", "ms", lambda r: _p(r["steady"], 50)),
        ("steady scroll frame p95", "ms", lambda r: _p(r["steady"], 95)),
        ("steady scroll stalls (> 50 ms)", "%", lambda r: 100 * _stalls(r["steady"])),
        ("rows in the DOM", "rows", lambda r: r["rows"]),
    ):
        figures[key] = (
            Figure(key, unit, [float(pick(r)) for r in virtual]),
            Figure(key, unit, [float(pick(r)) for r in every]),
        )
    for key, (mine, base) in figures.items():
        ratio = mine.median / base.median if base.median else float("nan")
        row(key, mine.text(1), f"every row in the DOM: {base.text(1)}; ratio {ratio:.3f}x")
    p95 = figures["steady scroll frame p95"][0].median
    row(
        "verdict",
        f"p95 steady scroll frame {p95:.1f} ms",
        f"target <= {TARGET_P95_FRAME_MS:g} ms: {verdict(p95 <= TARGET_P95_FRAME_MS)}",
    )


def _stalls(frames: list[float]) -> float:
    return sum(f > STALL_MS for f in frames) / max(1, len(frames))
