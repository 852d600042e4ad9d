// The workflow's timeline: one lane per host, one bar per run of each task (a retried task has
// a bar per run, its earlier runs in the retry colour), coloured by state. A running task's bar
// grows with the clock; a click on a bar (or Enter on it) focuses that task's lines in the
// merged log (workflow.js). Bars are placed with CSSOM (el.style), never markup.
"use strict";
(function () {
  const box = document.getElementById("timeline");
  const lanes = document.getElementById("tl-lanes");
  const span = document.getElementById("tl-span");
  const prefix = document.getElementById("workflow").dataset.prefix;
  const names = window.tasklogConstants;
  const finished = new Set(names.finished);
  const tasks = new Map();  // task_id -> {task, runs}
  let focused = null;
  let onFocus = () => {};

  const t = (iso) => (iso ? Date.parse(iso) : NaN);
  const ROW = 21;  // px per stacked row of bars

  // Each run of a task: [start, end or null (still going), state].
  function runsOf(entry) {
    const task = entry.task;
    if (entry.runs && entry.runs.length > 1) {
      return entry.runs.map((run, i) => {
        const next = entry.runs[i + 1];
        const end = t(run.completed_at) || (next ? t(next.started_at) : (finished.has(task.status) ? t(task.completed_at) : null));
        return [t(run.started_at), end || null, run.state, run.host || task.host];
      });
    }
    const end = finished.has(task.status) ? (t(task.completed_at) || t(task.started_at) + 1000 * (task.runtime || 0)) : null;
    return [[t(task.started_at), end, task.status, task.host]];
  }

  function seconds(ms) {
    const s = ms / 1000;
    return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function draw() {
    const now = Date.now();
    const bars = [];
    for (const entry of tasks.values()) {
      runsOf(entry).forEach(([start, end, state, host], i) => {
        if (!start) return;
        bars.push({ entry, start, end, state, host: host || "?", run: i });
      });
    }
    box.hidden = bars.length === 0;
    if (!bars.length) return;
    const t0 = Math.min(...bars.map((b) => b.start));
    const t1 = Math.max(...bars.map((b) => b.end || now), t0 + 1000);
    span.textContent = seconds(t1 - t0) + " from " + new Date(t0).toISOString().slice(11, 19) + " UTC";
    const byHost = new Map();
    for (const bar of bars) {
      if (!byHost.has(bar.host)) byHost.set(bar.host, []);
      byHost.get(bar.host).push(bar);
    }
    const rows = [];
    for (const host of [...byHost.keys()].sort()) {
      const lane = document.createElement("div");
      lane.className = "tl-lane";
      const label = document.createElement("span");
      label.className = "tl-host"; label.textContent = host; label.title = host;
      const track = document.createElement("div");
      track.className = "tl-track";
      // Runs at the same time on one host stack: each goes to the first row free at its start.
      const rowEnds = [];
      for (const bar of byHost.get(host).sort((a, b) => a.start - b.start)) {
        let level = rowEnds.findIndex((end) => end <= bar.start);
        if (level < 0) { level = rowEnds.length; rowEnds.push(0); }
        rowEnds[level] = bar.end || Infinity;
        const task = bar.entry.task;
        const el = document.createElement("button");
        el.type = "button";
        el.className = "tl-bar " + window.tasklogClass("state", bar.state) + (bar.end ? "" : " running");
        el.dataset.taskId = task.task_id;
        el.dataset.run = bar.run;
        const end = bar.end || now;
        el.style.left = ((bar.start - t0) / (t1 - t0)) * 100 + "%";
        el.style.width = Math.max(0.5, ((end - bar.start) / (t1 - t0)) * 100) + "%";
        el.style.top = 2 + level * ROW + "px";
        const runs = bar.entry.runs && bar.entry.runs.length > 1 ? " run " + (bar.run + 1) + " of " + bar.entry.runs.length : "";
        const text = (task.task_name || task.task_id) + runs + " · " + bar.state + " · " + seconds(end - bar.start) + (bar.end ? "" : " so far");
        el.title = text;
        el.setAttribute("aria-label", text);
        el.setAttribute("aria-pressed", String(focused === task.task_id));
        el.textContent = task.task_name || task.task_id.slice(0, 8);
        track.appendChild(el);
      }
      track.style.height = Math.max(1, rowEnds.length) * ROW + 4 + "px";
      lane.append(label, track);
      rows.push(lane);
    }
    const active = document.activeElement && document.activeElement.closest ? document.activeElement.closest(".tl-bar") : null;
    const keep = active ? [active.dataset.taskId, active.dataset.run] : null;
    lanes.replaceChildren(...rows);
    if (keep) {
      const again = lanes.querySelector(`.tl-bar[data-task-id="${CSS.escape(keep[0])}"][data-run="${keep[1]}"]`);
      if (again) again.focus();
    }
  }

  // A task retried has its runs fetched (again when its state changes).
  function fetchRuns(entry) {
    const url = prefix + "/api/tasks/" + encodeURIComponent(entry.task.task_id) + "/?limit=1";
    fetch(url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((detail) => { if (detail) { entry.runs = detail.runs || null; draw(); } })
      .catch(() => {});
  }

  function update(task) {
    let entry = tasks.get(task.task_id);
    if (!entry) { entry = { task: {}, runs: null, seen: null }; tasks.set(task.task_id, entry); }
    for (const [k, v] of Object.entries(task)) if (v !== null && v !== undefined) entry.task[k] = v;
    const mark = entry.task.status + "/" + entry.task.retries;
    if ((entry.task.retries > 0 || entry.task.status === names.retry) && entry.seen !== mark) fetchRuns(entry);
    entry.seen = mark;
    draw();
  }

  lanes.addEventListener("click", (event) => {
    const bar = event.target.closest(".tl-bar");
    if (!bar) return;
    focused = focused === bar.dataset.taskId ? null : bar.dataset.taskId;
    onFocus(focused);
    draw();
  });

  // Running bars grow with the clock.
  setInterval(() => { for (const entry of tasks.values()) if (!finished.has(entry.task.status)) { draw(); return; } }, 1000);

  window.tasklogTimeline = {
    update,
    onFocus: (callback) => { onFocus = callback; },
    clear: () => { focused = null; draw(); },
  };
})();
