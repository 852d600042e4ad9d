// The shared names (task states, streams, levels) as the page was served them: a JSON blob
// rendered from tasklog.core.constants, their one owner. No script spells a state name itself.
"use strict";
window.tasklogConstants = JSON.parse(document.getElementById("tasklog-constants").textContent);
// The class of a state, stream or level ("state-failure", "stream-log"), as api.pages.css_class
// makes it: a name outside the known set is "<kind>-other", so data never names a page class.
(function () {
  const names = window.tasklogConstants;
  const known = {
    state: new Set(names.states),
    stream: new Set([...names.streams, names.marker]),
    level: new Set(names.levels),
  };
  window.tasklogClass = function (kind, value) {
    const name = value === null || value === undefined ? "" : String(value);
    return kind + "-" + (known[kind].has(name) ? name.toLowerCase() : "other");
  };
})();
