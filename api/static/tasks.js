// The task list: rows updated live from /sse/tasks/ (status and progress events); start times
// shown relative to now (the exact time on hover), a running task's duration counting up.
"use strict";
(function () {
  const when = (iso) => (iso ? String(iso).slice(0, 19).replace("T", " ") : "—");
  const finished = new Set(window.tasklogConstants.finished);

  function ago(ms) {
    const s = Math.round(ms / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function duration(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 60) return s.toFixed(1) + "s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // Relative start times and running durations, from the clock of this browser.
  function tick() {
    const now = Date.now();
    for (const td of table.querySelectorAll("td.time[data-at]")) {
      const at = Date.parse(td.dataset.at);
      if (at) td.textContent = ago(now - at);
    }
    for (const td of table.querySelectorAll("td.runtime.running")) {
      const at = Date.parse(td.dataset.started);
      if (at) td.textContent = duration(now - at);
    }
  }
  const table = document.getElementById("tasks");
  const body = table.tBodies[0];
  const prefix = table.dataset.prefix;
  const live = document.getElementById("live");
  const filtered = table.dataset.filtered === "yes";

  function cell(cls) { const td = document.createElement("td"); if (cls) td.className = cls; return td; }

  function newRow(task) {
    const tr = document.createElement("tr");
    tr.dataset.taskId = task.task_id;
    const id = cell("mono");
    const a = document.createElement("a");
    a.href = prefix + "/task/" + encodeURIComponent(task.task_id) + "/";
    a.textContent = task.task_id.slice(0, 12);
    id.appendChild(a);
    const status = cell();
    const badge = document.createElement("span");
    badge.className = "badge";
    status.appendChild(badge);
    const prog = cell("pcol");
    const bar = document.createElement("div");
    bar.className = "progress";
    const fill = document.createElement("div"); fill.className = "fill";
    const pct = document.createElement("span"); pct.className = "pct";
    bar.append(fill, pct);
    const msg = document.createElement("div"); msg.className = "pmsg";
    prog.append(bar, msg);
    tr.append(id, cell("name"), status, prog, cell("wide-only"), cell("time wide-only"), cell("runtime"),
      cell("lines wide-only"));
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.insertBefore(tr, body.firstChild);
    return tr;
  }

  function rowOf(taskId) {
    for (const row of body.rows) if (row.dataset.taskId === taskId) return row;
    return null;
  }

  function linkWorkflow(tr, rootId) {
    const cell = tr.cells[0];
    if (cell.querySelector(".wf-link")) return;
    const wf = document.createElement("a");  // as the page's own rows have it
    wf.className = "wf-link";
    wf.href = prefix + "/workflow/" + encodeURIComponent(rootId) + "/";
    wf.title = "its workflow";
    wf.textContent = "workflow";
    cell.append(" ", wf);
  }

  function update(task) {
    let tr = rowOf(task.task_id);
    if (!tr) {
      if (filtered) return;  // a filtered view shows what the filter found
      tr = newRow(task);
    }
    const c = tr.cells;
    if (task.root_id && task.root_id !== task.task_id) {
      // The task and its workflow's root (a chain's first task) both link to the workflow.
      linkWorkflow(tr, task.root_id);
      const root = rowOf(task.root_id);
      if (root) linkWorkflow(root, task.root_id);
    }
    if (task.task_name) c[1].textContent = task.task_name;
    const badge = c[2].querySelector(".badge");
    badge.textContent = task.status; badge.className = "badge " + window.tasklogClass("state", task.status);
    window.tasklogProgress(c[3].querySelector(".progress"), task.progress, task.status);
    c[3].querySelector(".pmsg").textContent = task.progress_message || "";
    if (task.host) c[4].textContent = task.host;
    if (task.started_at) {
      c[5].dataset.at = task.started_at; c[5].title = when(task.started_at) + " UTC";
      c[6].dataset.started = task.started_at;
    }
    const ended = task.runtime !== null && task.runtime !== undefined;
    if (ended) c[6].textContent = Number(task.runtime).toFixed(2) + "s";
    c[6].classList.toggle("running", !ended && !finished.has(task.status) && Boolean(c[6].dataset.started));
    tick();
    if (task.line_count !== undefined) c[7].textContent = task.line_count;
  }

  for (const bar of table.querySelectorAll(".progress")) {
    const status = bar.closest("tr").querySelector(".badge").textContent;
    window.tasklogProgress(bar, bar.dataset.progress, status);
  }
  // The browser retries a dropped stream by itself, but gives up on an answer that is not a
  // stream (503: Postgres away or TASKLOG_API_MAX_STREAMS reached): try again after a while.
  // Changes since the page was rendered are sent again on each connection.
  const RETRY_CLOSED_MS = 5000;
  function connect() {
    const source = new EventSource(table.dataset.sse);
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => {
      live.textContent = "reconnecting…"; live.className = "live off";
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, RETRY_CLOSED_MS);
    };
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (data.type === "status") update(data);
    };
  }
  tick();
  setInterval(tick, 1000);
  connect();
})();
