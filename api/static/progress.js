// A progress bar (.progress with .fill and .pct), shared by the task list and the log view.
"use strict";
window.tasklogProgress = function (el, value, status) {
  const fill = el.querySelector(".fill");
  const pct = el.querySelector(".pct");
  const names = window.tasklogConstants;
  if (status === names.success) value = 100;
  // A task that ended without reporting progress has no bar, not an indeterminate one.
  el.classList.toggle("ended", names.unsuccessful.includes(status));
  el.dataset.progress = value ?? "";
  if (value === null || value === undefined || value === "") {
    el.classList.add("unknown"); fill.style.width = "0%"; pct.textContent = "";
  } else {
    el.classList.remove("unknown");
    const v = Math.max(0, Math.min(100, Number(value)));
    fill.style.width = v + "%"; pct.textContent = Math.round(v) + "%";
  }
};
