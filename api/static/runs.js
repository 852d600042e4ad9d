// The log view's understanding of a task: one section per run of a retried task (a header
// before each run's first line) and the traceback of a failure under its exception, the
// task's own frames standing out from library frames. Everything goes in with textContent.
"use strict";
(function () {
  const head = document.getElementById("taskhead");
  const log = document.getElementById("log");
  const detail = head.dataset.detail;
  let runs = [];
  let pending = null;

  // Frames of installed packages, the standard library and frozen modules are "library";
  // anything else is the application's own code.
  const LIBRARY = /[\\/](site|dist)-packages[\\/]|[\\/]lib[\\/]python\d[\d.]*[\\/]|^<frozen |^</;

  function headerText(run, i) {
    const parts = ["Run " + (i + 1) + " of " + runs.length, run.host || "?", run.state];
    if (run.runtime !== null && run.runtime !== undefined) parts.push(Number(run.runtime).toFixed(2) + " s");
    if (run.started_at) parts.push("started " + String(run.started_at).slice(0, 19).replace("T", " "));
    return parts.join(" · ");
  }

  function header(run, i) {
    let el = document.getElementById("run-" + run.run);
    if (!el) {
      el = document.createElement("div");
      el.id = "run-" + run.run;
      el.className = "run-head";
    }
    el.textContent = headerText(run, i);
    el.dataset.state = run.state;
    return el;
  }

  // Headers go before the first line of each run, whichever came first: the lines or the runs.
  function place() {
    if (runs.length < 2) return;
    runs.forEach((run, i) => {
      const el = header(run, i);
      if (el.isConnected) return;
      for (const row of log.children) {
        if (row.classList.contains("line") && Number(row.dataset.seq) >= run.first_seq) {
          log.insertBefore(el, row);
          return;
        }
      }
    });
  }

  function beforeLine(row) {
    if (runs.length < 2) return;
    const seq = Number(row.dataset.seq);
    runs.forEach((run, i) => {
      if (seq >= run.first_seq && !document.getElementById("run-" + run.run)) log.appendChild(header(run, i));
    });
  }

  function showTraceback(text) {
    const box = document.getElementById("traceback");
    const frames = document.getElementById("frames");
    if (!text) { box.hidden = true; return; }
    frames.textContent = "";
    let frame = null;
    for (const line of String(text).replace(/\n$/, "").split("\n")) {
      const file = /^\s*File "([^"]*)", line \d+/.exec(line);
      if (file) {
        frame = document.createElement("div");
        frame.className = "frame " + (LIBRARY.test(file[1]) ? "lib" : "own");
        frames.appendChild(frame);
      } else if (!/^\s/.test(line)) {
        frame = null;  // the "Traceback" line, the exception, "During handling of ..."
      }
      const row = document.createElement("div");
      row.className = "tb-line";
      row.textContent = line;
      (frame || frames).appendChild(row);
    }
    box.hidden = false;
  }

  function refresh() {
    if (pending) return pending;
    pending = fetch(detail, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((task) => {
        if (!task) return;
        runs = task.runs || [];
        place();
        showTraceback(task.traceback);
      })
      .catch(() => {})
      .finally(() => { pending = null; });
    return pending;
  }

  window.tasklogRuns = { refresh, beforeLine };
  refresh();
})();
