// The live log view: replay then live lines over SSE, resuming after a dropped connection
// without duplicates (the browser sends Last-Event-ID; lines at or below the last seq are
// ignored anyway).
"use strict";
(function () {
  const when = (iso) => (iso ? String(iso).slice(0, 19).replace("T", " ") : "—");
  const head = document.getElementById("taskhead");
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  const filter = document.getElementById("filter");
  const live = document.getElementById("live");
  const count = document.getElementById("count");
  const hidden = new Set();
  let lastSeq = 0;
  let lines = 0;
  let finished = false;
  let source = null;
  // A link to /task/<id>/#seq-N (from search) shows that line, highlighted, among its neighbours.
  const target = /^#seq-(\d+)$/.exec(window.location.hash);
  const targetSeq = target ? Number(target[1]) : null;
  if (targetSeq !== null) follow.checked = false;
  let lastStatus = document.getElementById("status").textContent.trim();

  function setText(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value === null || value === undefined || value === "" ? "—" : value;
  }

  function setStatus(task) {
    const badge = document.getElementById("status");
    badge.textContent = task.status;
    badge.className = "badge " + window.tasklogClass("state", task.status);
    if (task.task_name) setText("task-name", task.task_name);
    if (task.host) setText("task-host", task.host);
    if (task.started_at) setText("task-started", when(task.started_at));
    if (task.completed_at) setText("task-completed", when(task.completed_at));
    const progress = document.getElementById("progress");
    window.tasklogProgress(progress, task.progress, task.status);
    document.getElementById("progress-message").textContent = task.progress_message || "";
    const exc = document.getElementById("exception");
    if (task.exc_type) { exc.hidden = false; exc.textContent = task.exc_type + ": " + (task.exc_message || ""); }
    if (task.status !== lastStatus) { lastStatus = task.status; window.tasklogRuns.refresh(); }
  }

  function matches(row) {
    if (!row.classList.contains("line")) return true;  // a run's header
    const q = filter.value.trim().toLowerCase();
    return !hidden.has(row.dataset.stream) && (!q || row.dataset.text.includes(q));
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  }

  function addLine(line) {
    if (line.id <= lastSeq) return;
    lastSeq = line.id;
    const row = document.createElement("div");
    row.className = "line " + window.tasklogClass("stream", line.stream) +
      (line.level ? " " + window.tasklogClass("level", line.level) : "");
    row.dataset.seq = line.id;
    row.id = "seq-" + line.id;
    // The "N lines omitted" marker shows and hides with the first stream (stdout).
    const names = window.tasklogConstants;
    row.dataset.stream = line.stream === names.marker ? names.streams[0] : line.stream;
    const seq = document.createElement("span");
    seq.className = "seq"; seq.textContent = line.id;
    const time = document.createElement("span");
    time.className = "ts"; time.textContent = (line.timestamp || "").slice(11, 23);
    time.title = line.timestamp || "";
    const tag = document.createElement("span");
    tag.className = "tag"; tag.textContent = line.level || line.stream;
    const text = document.createElement("span");
    text.className = "msg";
    row.dataset.text = window.tasklogAnsi.render(text, line.message).toLowerCase();
    row.append(seq, time, tag, text);
    row.hidden = !matches(row);
    window.tasklogRuns.beforeLine(row);
    log.appendChild(row);
    lines += 1;
    if (line.id === targetSeq) {
      row.classList.add("target");
      row.hidden = false;
      row.scrollIntoView({ block: "center" });
    }
  }

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
      const stick = follow.checked;
      if (data.type === "new_log") addLine(data);
      else if (data.type === "status") setStatus(data);
      else if (data.type === "end") {
        finished = true;
        source.close();
        window.tasklogRuns.refresh();
        live.textContent = "finished"; live.className = "live done";
      }
      count.textContent = lines + (lines === 1 ? " line" : " lines");
      if (stick) log.scrollTop = log.scrollHeight;
    };
  }

  // Scrolling up pauses follow; scrolling back to the bottom resumes it.
  log.addEventListener("scroll", () => { follow.checked = atBottom(); });
  follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });
  filter.addEventListener("input", () => {
    for (const row of log.children) row.hidden = !matches(row);
  });
  for (const box of document.querySelectorAll(".stream-toggle")) {
    box.addEventListener("change", () => {
      if (box.checked) hidden.delete(box.value); else hidden.add(box.value);
      for (const row of log.children) row.hidden = !matches(row);
    });
  }
  const bar = document.getElementById("progress");
  window.tasklogProgress(bar, bar.dataset.progress, document.getElementById("status").textContent.trim());
  window.tasklogView = { lastSeq: () => lastSeq, reconnect: () => { source.close(); connect(); } };
  connect();
})();
