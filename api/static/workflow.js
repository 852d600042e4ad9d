// The workflow page: the tree of the workflow's tasks with live states and progress, and one
// merged live log of all of them. The stream's event id is a cursor of every task's last seq:
// the browser resumes with it after a drop; a line already shown (task, seq) is never shown
// twice anyway.
"use strict";
(function () {
  const root = document.getElementById("workflow");
  const prefix = root.dataset.prefix;
  const rootId = root.dataset.rootId;
  const treeRoot = document.getElementById("tree-root");
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  const live = document.getElementById("live");
  const count = document.getElementById("count");
  const tasks = new Map();   // task_id -> {task, node}
  const lastSeq = new Map(); // task_id -> last seq shown
  let lines = 0;
  let cursor = "";
  let source = null;
  let focused = null;  // a task whose lines alone are shown (a click on its timeline bar)

  function node(task) {
    const li = document.createElement("li");
    li.dataset.taskId = task.task_id;
    const row = document.createElement("div");
    row.className = "wf-node";
    const name = document.createElement("a");
    name.className = "name";
    name.href = prefix + "/task/" + encodeURIComponent(task.task_id) + "/";
    const badge = document.createElement("span");
    badge.className = "badge";
    const bar = document.createElement("div");
    bar.className = "progress";
    const fill = document.createElement("div"); fill.className = "fill";
    const pct = document.createElement("span"); pct.className = "pct";
    bar.append(fill, pct);
    row.append(name, badge, bar);
    const children = document.createElement("ul");
    li.append(row, children);
    return li;
  }

  function place(entry) {
    const parent = tasks.get(entry.task.parent_id);
    const home = parent && parent !== entry ? parent.node.querySelector("ul") : treeRoot;
    if (entry.node.parentNode !== home) home.appendChild(entry.node);
  }

  function update(task) {
    let entry = tasks.get(task.task_id);
    if (!entry) {
      entry = { task: {}, node: node(task) };
      tasks.set(task.task_id, entry);
      const empty = document.getElementById("wf-empty");
      if (empty) empty.remove();
    }
    for (const [k, v] of Object.entries(task)) if (v !== null && v !== undefined) entry.task[k] = v;
    const t = entry.task;
    place(entry);
    // Tasks whose parent arrived after them move under it.
    for (const other of tasks.values()) if (other.task.parent_id === t.task_id) place(other);
    const row = entry.node.firstChild;
    row.querySelector(".name").textContent = (t.task_name || "?") + " · " + t.task_id.slice(0, 8);
    const badge = row.querySelector(".badge");
    badge.textContent = t.status; badge.className = "badge " + window.tasklogClass("state", t.status);
    window.tasklogProgress(row.querySelector(".progress"), t.progress, t.status);
    window.tasklogTimeline.update(task);
    document.getElementById("wf-count").textContent = tasks.size + (tasks.size === 1 ? " task" : " tasks");
  }

  function addLine(line) {
    if (line.id <= (lastSeq.get(line.task_id) || 0)) return;
    lastSeq.set(line.task_id, line.id);
    const row = document.createElement("div");
    row.className = "line " + window.tasklogClass("stream", line.stream) +
      (line.level ? " " + window.tasklogClass("level", line.level) : "");
    row.dataset.taskId = line.task_id;
    row.dataset.seq = line.id;
    const time = document.createElement("span");
    time.className = "ts"; time.textContent = (line.timestamp || "").slice(11, 23);
    time.title = line.timestamp || "";
    const tid = document.createElement("a");
    tid.className = "tid";
    tid.href = prefix + "/task/" + encodeURIComponent(line.task_id) + "/#L" + line.id;
    const entry = tasks.get(line.task_id);
    tid.textContent = line.task_id.slice(0, 8);
    tid.title = (entry && entry.task.task_name ? entry.task.task_name + " " : "") + line.task_id;
    const tag = document.createElement("span");
    tag.className = "tag"; tag.textContent = line.level || line.stream;
    const text = document.createElement("span");
    text.className = "msg";
    window.tasklogAnsi.render(text, line.message);
    row.append(time, tid, tag, text);
    row.hidden = focused !== null && focused !== line.task_id;
    log.appendChild(row);
    lines += 1;
  }

  function connect() {
    const url = root.dataset.sse + (cursor ? "?after=" + encodeURIComponent(cursor) : "");
    source = new EventSource(url);
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      const stick = follow.checked;
      if (event.lastEventId) cursor = event.lastEventId;
      if (data.type === "new_log") addLine(data);
      else if (data.type === "status") update(data);
      count.textContent = lines + (lines === 1 ? " line" : " lines");
      if (stick) log.scrollTop = log.scrollHeight;
    };
  }

  // A bar of the timeline focuses its task's lines; the chip says so and undoes it.
  function focus(taskId) {
    focused = taskId;
    const chip = document.getElementById("focus-chip");
    chip.hidden = taskId === null;
    const entry = taskId === null ? null : tasks.get(taskId);
    document.getElementById("focus-name").textContent = entry
      ? "only " + (entry.task.task_name || "?") + " · " + taskId.slice(0, 8) : "";
    let first = null;
    for (const row of log.children) {
      row.hidden = taskId !== null && row.dataset.taskId !== taskId;
      if (!row.hidden && first === null && taskId !== null) first = row;
    }
    follow.checked = taskId === null;
    if (first) log.scrollTop = first.offsetTop - log.offsetTop;
    else if (taskId === null) log.scrollTop = log.scrollHeight;
  }
  window.tasklogTimeline.onFocus(focus);
  document.getElementById("focus-clear").addEventListener("click", () => {
    window.tasklogTimeline.clear();
    focus(null);
  });

  log.addEventListener("scroll", () => {
    follow.checked = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  });
  window.tasklogWorkflow = {
    rootId,
    cursor: () => cursor,
    reconnect: () => { source.close(); connect(); },
    drop: () => { source.close(); live.textContent = "dropped"; live.className = "live off"; },
    resume: () => connect(),
  };
  connect();
})();
