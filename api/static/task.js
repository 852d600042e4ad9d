// The live log view, as CI log viewers have it: replay then live lines over SSE (resuming after
// a dropped connection without duplicates), rendered virtually (only the rows on screen are in
// the DOM, so 100,000 lines scroll as smoothly as 100), with line links (#L42, #L40-L52),
// collapsible ::group:: sections, find, jump to the first error, wrap and time toggles.
"use strict";
(function () {
  const names = window.tasklogConstants;
  const errorLevels = new Set(names.error_levels);
  const unsuccessful = new Set(names.unsuccessful);
  const $ = (id) => document.getElementById(id);
  const head = $("taskhead");
  const box = $("logbox");     // the scrolling box
  const log = $("log");        // the rows on screen, inside a box as tall as every row
  const follow = $("follow");
  const filter = $("filter");
  const live = $("live");
  const count = $("count");
  const find = $("find");
  const findCount = $("find-count");
  const firstError = $("first-error");
  const wrap = $("wrap");
  const timeMode = $("time-mode");
  const copyLink = $("copy-link");

  const OVERSCAN = 600;       // px rendered above and below the visible part
  const CACHE_MAX = 4000;     // row nodes kept for reuse
  const GROUP = /^::group::(.*)$/;
  const ENDGROUP = /^::endgroup::\s*$/;

  // The model: every entry in seq order (lines, group heads, run heads); `view` is the
  // entries shown, `offsets[i]` the top of view[i] in px.
  const entries = [];
  const bySeq = new Map();
  let view = [];
  let offsets = [0];
  let rowHeight = 19;
  let charWidth = 7.5;        // px of one character of the log's monospace font
  let cols = 0;               // characters that fit on a row (0: to be measured)
  const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
  const hidden = new Set();
  let lastSeq = 0;
  let lines = 0;
  let finished = false;
  let status = $("status").textContent.trim();
  let startedAt = Date.parse(head.dataset.started || "") || null;
  let openGroup = null;
  let firstErrorEntry = null;
  let runs = [];
  let source = null;
  let selection = null;       // {from, to} seqs, from the hash or a click on a line number
  let pendingTarget = null;   // a selection whose first line has not arrived yet
  let matches = [];           // entries matching the find box
  let current = -1;           // index in matches
  let appended = false;
  let frame = 0;
  let scrolledTo = -1;        // the scrollTop the view set itself (its scroll event is no user's)
  let anchor = null;          // an entry revealed, held in place while lines arrive below it
  const cache = new Map();

  // -- model -----------------------------------------------------------------------------

  function streamOf(e) { return e.stream === names.marker ? names.streams[0] : e.stream; }

  function isError(e) {
    return e.kind === "line" && (e.stream === "stderr" || errorLevels.has(String(e.level).toUpperCase()));
  }

  function shown(e) {
    if (e.kind === "run") return true;
    if (e.kind === "end") return false;
    const q = filter.value.trim().toLowerCase();
    if (q) return e.kind === "line" && !hidden.has(streamOf(e)) && e.plain.includes(q);
    if (e.kind === "group") return true;
    if (e.group && !e.group.open) return false;
    return !hidden.has(streamOf(e));
  }

  function rebuild() {
    view = [];
    offsets = [0];
    for (const e of entries) if (shown(e)) push(e);
    cache.clear();
    schedule();
  }

  function push(e) {
    view.push(e);
    offsets.push(offsets[offsets.length - 1] + (e.h || rowHeight));
  }

  function recount() {
    for (let i = 0; i < view.length; i++) offsets[i + 1] = offsets[i] + (view[i].h || rowHeight);
  }

  function addLine(line) {
    if (line.id <= lastSeq) return;
    lastSeq = line.id;
    placeRuns(line.id);
    const e = {
      kind: "line", seq: line.id, ts: line.timestamp || "", t: Date.parse(line.timestamp || "") || null,
      stream: line.stream, level: line.level, message: line.message, group: openGroup, h: 0,
    };
    const title = GROUP.exec(line.message);
    if (title) {
      if (openGroup) openGroup.endT = e.t;
      e.kind = "group"; e.title = title[1].trim() || "group"; e.group = null; e.size = 0; e.endT = null;
      e.open = false; e.ended = false;
      openGroup = e;
    } else if (ENDGROUP.test(line.message)) {
      e.kind = "end"; e.group = null;
      if (openGroup) { openGroup.endT = e.t; openGroup.ended = true; cache.delete(openGroup); }
      openGroup = null;
    } else if (openGroup) {
      openGroup.size += 1; openGroup.lastT = e.t; cache.delete(openGroup);
    }
    const plain = plainText(e.kind === "group" ? e.title : line.message);
    e.plain = plain.toLowerCase();
    e.len = plain.length;
    e.simple = PRINTABLE_ASCII.test(plain);  // one character, one column
    entries.push(e);
    bySeq.set(e.seq, e);
    lines += 1;
    if (!firstErrorEntry && isError(e)) { firstErrorEntry = e; firstError.disabled = false; }
    const q = find.value.trim().toLowerCase();
    if (q && e.kind !== "end" && e.plain.includes(q)) { matches.push(e); showFindCount(); }
    if (shown(e)) push(e);
    if (pendingTarget && e.seq >= pendingTarget.from) { const t = pendingTarget; pendingTarget = null; reveal(t.from); }
    appended = true;
    schedule();
  }

  const scratch = document.createElement("span");
  function plainText(message) {
    scratch.textContent = "";
    return window.tasklogAnsi.render(scratch, message);
  }

  // -- runs of a retried task: a head before each run's first line ------------------------

  function runText(run, i) {
    const parts = ["Run " + (i + 1) + " of " + runs.length, run.host || "?", run.state];
    if (run.runtime !== null && run.runtime !== undefined) parts.push(Number(run.runtime).toFixed(2) + " s");
    if (run.started_at) parts.push("started " + String(run.started_at).slice(0, 19).replace("T", " "));
    return parts.join(" · ");
  }

  function setRuns(given) {
    runs = given || [];
    for (let i = entries.length - 1; i >= 0; i--) if (entries[i].kind === "run") entries.splice(i, 1);
    if (runs.length >= 2) {
      runs.forEach((run, i) => {
        const at = entries.findIndex((e) => e.seq >= run.first_seq);
        if (at >= 0) entries.splice(at, 0, { kind: "run", seq: run.first_seq, run: run.run, text: runText(run, i), state: run.state, h: 0 });
      });
    }
    rebuild();
  }

  // Heads of runs whose first line is the one arriving now.
  function placeRuns(seq) {
    runs.forEach((run, i) => {
      if (runs.length < 2 || seq < run.first_seq) return;
      if (entries.some((e) => e.kind === "run" && e.run === run.run)) return;
      const e = { kind: "run", seq: run.first_seq, run: run.run, text: runText(run, i), state: run.state, h: 0 };
      entries.push(e);
      if (openGroup) openGroup = null;
      push(e);
    });
  }

  // -- rendering --------------------------------------------------------------------------

  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function when(e) {
    if (timeMode.value === "relative" && e.t !== null && startedAt !== null) {
      const s = (e.t - startedAt) / 1000;
      return (s < 0 ? "-" : "+") + Math.abs(s).toFixed(3) + "s";
    }
    return e.ts.slice(11, 23);
  }

  function seconds(ms) {
    const s = ms / 1000;
    return s < 60 ? s.toFixed(2) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function lineNumber(e) {
    const a = document.createElement("a");
    a.className = "seq"; a.href = "#L" + e.seq; a.textContent = e.seq;
    a.setAttribute("aria-label", "line " + e.seq);
    return a;
  }

  function node(e) {
    let el = cache.get(e);
    if (el) return el;
    el = document.createElement("div");
    el.dataset.seq = e.seq;
    if (e.kind === "run") {
      el.className = "run-head"; el.id = "run-" + e.run; el.dataset.state = e.state;
      el.textContent = e.text;
    } else {
      el.id = "L" + e.seq;
      const ts = document.createElement("span");
      ts.className = "ts"; ts.textContent = when(e); ts.title = e.ts;
      const tag = document.createElement("span");
      tag.className = "tag";
      const msg = document.createElement("span");
      msg.className = "msg";
      if (e.kind === "group") {
        el.className = "line group-head" + (e.open ? " open" : "");
        tag.textContent = "group";
        const fold = document.createElement("button");
        fold.type = "button"; fold.className = "fold";
        fold.setAttribute("aria-expanded", String(e.open));
        fold.textContent = e.title;
        const meta = document.createElement("span");
        meta.className = "gmeta";
        const end = e.endT !== null ? e.endT : e.lastT;
        const running = !e.ended && !finished;
        meta.textContent = e.size + (e.size === 1 ? " line" : " lines") +
          (running ? " · running" : end && e.t ? " · " + seconds(end - e.t) : "");
        msg.append(fold, meta);
      } else {
        el.className = "line " + window.tasklogClass("stream", e.stream) +
          (e.level ? " " + window.tasklogClass("level", e.level) : "") + (e.group ? " in-group" : "");
        tag.textContent = e.level || e.stream;
        window.tasklogAnsi.render(msg, e.message);
      }
      const copy = document.createElement("button");
      copy.type = "button"; copy.className = "copy"; copy.tabIndex = -1;
      copy.title = "copy a link to line " + e.seq; copy.setAttribute("aria-label", copy.title);
      el.append(lineNumber(e), ts, tag, msg, copy);
    }
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(e, el);
    return el;
  }

  function indexAt(y) {  // the view index of the row at height y
    let lo = 0, hi = view.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (offsets[mid] <= y) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  function render(depth = 0) {
    const total = offsets[view.length];
    log.style.height = total + "px";
    const pinned = appended && follow.checked;  // to the end, and kept there as rows are measured
    if (pinned) scrollTo(box.scrollHeight);
    else if (anchor) {
      const i = view.indexOf(anchor);
      if (i >= 0) scrollTo(Math.max(0, offsets[i] - box.clientHeight / 3));
    }
    appended = false;
    count.textContent = lines + (lines === 1 ? " line" : " lines");
    if (!view.length) { log.replaceChildren(); log.style.paddingTop = "0px"; return; }
    const top = box.scrollTop;
    const first = indexAt(Math.max(0, top - OVERSCAN));
    const last = indexAt(top + box.clientHeight + OVERSCAN);
    log.style.paddingTop = offsets[first] + "px";
    const rows = [];
    const hit = new Set(matches);
    const now = current >= 0 ? matches[current] : null;
    for (let i = first; i <= last; i++) {
      const e = view[i];
      const el = node(e);
      const inSel = selection !== null && e.kind !== "run" && e.seq >= selection.from && e.seq <= selection.to;
      el.classList.toggle("target", inSel);
      el.classList.toggle("match", hit.has(e));
      el.classList.toggle("current", e === now);
      rows.push(el);
    }
    // Rows already there stay (a focused line number or fold button keeps its focus).
    const keep = new Set(rows);
    for (const child of Array.from(log.children)) if (!keep.has(child)) child.remove();
    let next = log.firstChild;
    for (const el of rows) {
      if (el === next) next = next.nextSibling;
      else log.insertBefore(el, next);
    }
    // Rows are one text line high unless they wrap. A plain line known to fit is not
    // measured (reading a height makes the browser lay the page out now); others are, once.
    if (!cols) {
      const plainRow = rows.find((r) => r.classList.contains("line") && !r.classList.contains("in-group") && !r.classList.contains("group-head"));
      const msg = plainRow && plainRow.querySelector(".msg");
      if (msg) cols = Math.floor(msg.clientWidth / charWidth);
    }
    let changed = false;
    for (let i = first; i <= last; i++) {
      const e = view[i];
      if (e.h) continue;
      if (e.kind === "line" && (!wrap.checked || (cols && e.simple && e.len <= cols - 3))) {
        e.h = rowHeight;
        continue;
      }
      const h = rows[i - first].offsetHeight;
      if (!h) continue;
      if (h !== rowHeight) changed = true;  // only a height unlike the one assumed
      e.h = h;
    }
    if (changed && depth < 2) { recount(); appended = pinned; render(depth + 1); }
  }

  // -- selection: #L42, #L40-L52 ----------------------------------------------------------

  function parseHash() {
    const m = /^#(?:L(\d+)(?:-L?(\d+))?|seq-(\d+))$/.exec(window.location.hash);
    if (!m) return null;
    const a = Number(m[1] || m[3]);
    const b = m[2] ? Number(m[2]) : a;
    return { from: Math.min(a, b), to: Math.max(a, b) };
  }

  function select(sel, scroll) {
    selection = sel;
    copyLink.disabled = sel === null;
    if (sel && scroll) {
      follow.checked = false;
      if (bySeq.has(sel.from)) reveal(sel.from); else pendingTarget = sel;
    }
    schedule();
  }

  function hashOf(sel) { return sel.from === sel.to ? "#L" + sel.from : "#L" + sel.from + "-L" + sel.to; }

  // Shows an entry: opens its group, clears a filter that hides it, scrolls it to a third
  // of the way down.
  function reveal(seq) {
    const e = bySeq.get(seq);
    if (!e) return;
    let again = false;
    if (e.group && !e.group.open) { e.group.open = true; again = true; }
    if (!shown(e)) { filter.value = ""; hidden.clear(); for (const b of document.querySelectorAll(".stream-toggle")) b.checked = true; again = true; }
    if (again) rebuild();
    const i = view.indexOf(e);
    if (i < 0) return;
    follow.checked = false;
    anchor = e;  // until the reader scrolls: a replay still adding lines may not move it
    render();
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Pages served over plain http have no clipboard API: the old way still works there.
      const area = document.createElement("textarea");
      area.value = text; document.body.appendChild(area); area.select();
      document.execCommand("copy"); area.remove();
    }
    copyLink.textContent = "link copied";
    setTimeout(() => { copyLink.textContent = "copy link"; }, 1500);
  }

  function linkTo(sel) {
    return window.location.href.replace(/#.*$/, "") + hashOf(sel);
  }

  log.addEventListener("click", (event) => {
    const row = event.target.closest("[data-seq]");
    if (!row) return;
    const seq = Number(row.dataset.seq);
    if (event.target.closest("a.seq")) {
      event.preventDefault();
      const sel = event.shiftKey && selection ? { from: Math.min(selection.from, seq), to: Math.max(selection.to, seq) } : { from: seq, to: seq };
      history.replaceState(null, "", hashOf(sel));
      select(sel, false);
    } else if (event.target.closest("button.copy")) {
      const sel = { from: seq, to: seq };
      history.replaceState(null, "", hashOf(sel));
      select(sel, false);
      copy(linkTo(sel));
    } else if (event.target.closest("button.fold")) {
      const e = bySeq.get(seq);
      e.open = !e.open;
      rebuild();
      requestAnimationFrame(() => { const b = document.querySelector('#L' + seq + ' button.fold'); if (b) b.focus(); });
    }
  });
  copyLink.addEventListener("click", () => { if (selection) copy(linkTo(selection)); });
  window.addEventListener("hashchange", () => select(parseHash(), true));

  // -- find -------------------------------------------------------------------------------

  function showFindCount() {
    const q = find.value.trim();
    findCount.textContent = !q ? "" : matches.length ? (current + 1) + " / " + matches.length : "no match";
  }

  function runFind() {
    const q = find.value.trim().toLowerCase();
    matches = q ? entries.filter((e) => (e.kind === "line" || e.kind === "group") && e.plain.includes(q)) : [];
    current = matches.length ? 0 : -1;
    showFindCount();
    if (current >= 0) reveal(matches[0].seq); else schedule();
  }

  function step(by) {
    if (!matches.length) return;
    current = (current + by + matches.length) % matches.length;
    showFindCount();
    reveal(matches[current].seq);
  }

  find.addEventListener("input", runFind);
  find.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); step(event.shiftKey ? -1 : 1); }
  });
  $("find-next").addEventListener("click", () => step(1));
  $("find-prev").addEventListener("click", () => step(-1));

  // -- the bar ----------------------------------------------------------------------------

  firstError.addEventListener("click", () => {
    if (!firstErrorEntry) return;
    const sel = { from: firstErrorEntry.seq, to: firstErrorEntry.seq };
    history.replaceState(null, "", hashOf(sel));
    select(sel, true);
  });
  wrap.addEventListener("change", () => {
    box.classList.toggle("nowrap", !wrap.checked);
    for (const e of entries) e.h = 0;
    cols = 0;
    recount(); cache.clear(); schedule();
  });
  timeMode.addEventListener("change", () => { cache.clear(); schedule(); });
  function scrollTo(y) {
    log.style.height = offsets[view.length] + "px";  // else the scroll stops at the old end
    box.scrollTop = y;
    scrolledTo = box.scrollTop;
  }

  box.addEventListener("scroll", () => {
    if (box.scrollTop !== scrolledTo) {  // the reader's own scroll
      anchor = null;
      follow.checked = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
    }
    schedule();
  });
  // Home and End jump to the first and the last line at once; End follows a live task again.
  // The browser's own jumps are animated, and a key pressed while one still runs is lost.
  box.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey || event.shiftKey) return;
    if (event.key === "Home") {
      event.preventDefault();
      anchor = null;
      follow.checked = false;
      scrollTo(0);
      schedule();
    } else if (event.key === "End") {
      event.preventDefault();
      anchor = null;
      follow.checked = true;
      appended = true;
      schedule();
    }
  });
  follow.addEventListener("change", () => { if (follow.checked) { anchor = null; appended = true; schedule(); } });
  filter.addEventListener("input", rebuild);
  for (const toggle of document.querySelectorAll(".stream-toggle")) {
    toggle.addEventListener("change", () => {
      if (toggle.checked) hidden.delete(toggle.value); else hidden.add(toggle.value);
      rebuild();
    });
  }
  window.addEventListener("resize", () => { for (const e of entries) e.h = 0; cols = 0; recount(); schedule(); });

  // -- the task and its stream ------------------------------------------------------------

  function setText(id, value) {
    const el = $(id);
    if (el) el.textContent = value === null || value === undefined || value === "" ? "—" : value;
  }

  const stamp = (iso) => (iso ? String(iso).slice(0, 19).replace("T", " ") : "—");

  function setStatus(task) {
    const waiting = $("waiting");
    if (waiting && task.status !== names.pending) waiting.remove();
    const badge = $("status");
    badge.textContent = task.status;
    badge.className = "badge " + window.tasklogClass("state", task.status);
    if (task.task_name) setText("task-name", task.task_name);
    if (task.host) setText("task-host", task.host);
    if (task.started_at) {
      setText("task-started", stamp(task.started_at));
      const t = Date.parse(task.started_at);
      if (t && t !== startedAt) { startedAt = t; if (timeMode.value === "relative") cache.clear(); }
    }
    if (task.completed_at) setText("task-completed", stamp(task.completed_at));
    window.tasklogProgress($("progress"), task.progress, task.status);
    $("progress-message").textContent = task.progress_message || "";
    const exc = $("exception");
    if (task.exc_type) { exc.hidden = false; exc.textContent = task.exc_type + ": " + (task.exc_message || ""); }
    if (task.status !== status) { status = task.status; refreshRuns(); }
  }

  function ended() {
    finished = true;
    cache.clear();
    // A failed task opens the group holding its last line: where it went wrong.
    if (unsuccessful.has(status)) {
      for (let i = entries.length - 1; i >= 0; i--) {
        const e = entries[i];
        if (e.kind === "line" || e.kind === "group") {
          const group = e.kind === "group" ? e : e.group;
          if (group && !group.open) { group.open = true; rebuild(); appended = follow.checked; }
          break;
        }
      }
    }
    schedule();
  }

  function refreshRuns() { window.tasklogRuns.refresh().then((given) => { if (given) setRuns(given); }); }

  const RETRY_CLOSED_MS = 5000;

  function connect() {
    // A fresh EventSource after a close resumes after the last seq shown.
    const url = head.dataset.sse + (lastSeq ? "?after_seq=" + lastSeq : "");
    source = new EventSource(url);
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => {
      if (finished) return;
      live.textContent = "reconnecting…"; live.className = "live off";
      // The browser retries a dropped stream by itself, but gives up on an answer that is
      // not a stream (503: Postgres away or TASKLOG_API_MAX_STREAMS reached): try again.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, RETRY_CLOSED_MS);
    };
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (data.type === "new_log") addLine(data);
      else if (data.type === "status") setStatus(data);
      else if (data.type === "end") {
        source.close();
        refreshRuns();
        live.textContent = "finished"; live.className = "live done";
        ended();
      }
    };
  }

  // The height of one row of text, measured once with the page's fonts.
  (function measure() {
    const probe = node({ kind: "line", seq: 1, ts: "", t: null, stream: names.streams[0], level: null, message: "MMMMMMMMMM", group: null });
    cache.clear();
    log.appendChild(probe);
    rowHeight = probe.offsetHeight || rowHeight;
    const text = probe.querySelector(".msg span");
    if (text) charWidth = text.getBoundingClientRect().width / 10 || charWidth;
    probe.remove();
  })();

  const bar = $("progress");
  window.tasklogProgress(bar, bar.dataset.progress, status);
  const initial = parseHash();
  if (initial) select(initial, true);
  window.tasklogView = {
    lastSeq: () => lastSeq,
    reconnect: () => { source.close(); connect(); },
    // What the view holds (tests and the bench read it: the DOM holds only the rows on screen).
    lines: () => entries.filter((e) => e.kind !== "run").map((e) => ({ seq: e.seq, kind: e.kind, stream: e.stream, level: e.level })),
    shown: () => view.map((e) => e.seq),
    rendered: () => log.children.length,
  };
  refreshRuns();
  connect();
})();
