// The demo launcher: POST the task and link to its live log.
"use strict";
(function () {
  const root = document.getElementById("launcher");
  if (!root) return;
  const list = document.getElementById("launched");
  for (const form of root.querySelectorAll("form.launch")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const kwargs = {};
      for (const input of form.querySelectorAll("input")) {
        if (input.value !== "") kwargs[input.name] = Number(input.value);
      }
      const item = document.createElement("li");
      list.insertBefore(item, list.firstChild);
      try {
        const response = await fetch(root.dataset.url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ task: form.dataset.task, kwargs: kwargs }),
        });
        const data = await response.json();
        if (!response.ok) { item.className = "err"; item.textContent = data.error; return; }
        const a = document.createElement("a");
        a.href = data.url;
        a.textContent = data.task_name + " " + data.task_id;
        item.appendChild(a);
      } catch (err) {
        item.className = "err"; item.textContent = String(err);
      }
    });
  }
})();
