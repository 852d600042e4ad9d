// The task's detail the log view needs besides its lines: its runs (task.js puts a head before
// each run's first line) and the traceback of a failure under its exception, the task's own
// frames standing out from library frames. Everything goes in with textContent.
"use strict";
(function () {
  const head = document.getElementById("taskhead");
  const detail = head.dataset.detail;
  let pending = null;

  // Frames of installed packages, the standard library and frozen modules are "library";
  // anything else is the application's own code.
  const LIBRARY = /[\\/](site|dist)-packages[\\/]|[\\/]lib[\\/]python\d[\d.]*[\\/]|^<frozen |^</;

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
        if (!task) return null;
        showTraceback(task.traceback);
        return task.runs || [];
      })
      .catch(() => null)
      .finally(() => { pending = null; });
    return pending;
  }

  window.tasklogRuns = { refresh };
})();
