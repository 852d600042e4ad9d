// The shared names (task states, streams) as the page was served them: a JSON blob rendered
// from tasklog.core.constants, their one owner. No script spells a state name itself.
"use strict";
window.tasklogConstants = JSON.parse(document.getElementById("tasklog-constants").textContent);
