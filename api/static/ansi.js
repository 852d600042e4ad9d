// ANSI SGR colours to DOM nodes. Text only ever goes through textContent: nothing a task
// prints is interpreted as HTML.
"use strict";
(function () {
  const SGR = /\x1b\[([0-9;]*)m/g;
  // Every other escape is dropped, whole: CSI (any parameters, colons too), OSC (titles,
  // clipboard writes), two-character escapes, and one cut short at the end of the line.
  const OTHER = /\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\|$)|\[[0-?]*[ -\/]*$|[@-Z\\-_]|$)/g;
  const byte = (n) => Number.isInteger(n) && n >= 0 && n <= 255;

  function applyCodes(state, codes) {
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { state.fg = state.bg = null; state.bold = state.italic = state.underline = false; }
      else if (c === 1) state.bold = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) state.bold = false;
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) state.fg = "c" + (c - 30);
      else if (c >= 90 && c <= 97) state.fg = "c" + (c - 90 + 8);
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = "c" + (c - 40);
      else if (c >= 100 && c <= 107) state.bg = "c" + (c - 100 + 8);
      else if (c === 49) state.bg = null;
      else if (c === 38 || c === 48) {
        // 38;5;n or 38;2;r;g;b. A colour cut short or out of range (38;5 or 38;2;1, as
        // terminals receive from careless programs) is ignored with the rest of the sequence.
        let value = null;
        if (codes[i + 1] === 5 && byte(codes[i + 2])) {
          const n = codes[i + 2];
          value = n < 16 ? "c" + n : "#" + xterm256(n);
        } else if (codes[i + 1] === 2 && [2, 3, 4].every((k) => byte(codes[i + k]))) {
          value = "rgb(" + [codes[i + 2], codes[i + 3], codes[i + 4]].join(",") + ")";
        }
        if (value === null) return;
        if (c === 38) state.fg = value; else state.bg = value;
        i += codes[i + 1] === 5 ? 2 : 4;
      }
    }
  }

  function xterm256(n) {
    if (n >= 232) { const v = (8 + (n - 232) * 10).toString(16).padStart(2, "0"); return v + v + v; }
    n -= 16;
    const steps = [0, 95, 135, 175, 215, 255];
    return [Math.floor(n / 36), Math.floor(n / 6) % 6, n % 6]
      .map((k) => steps[k].toString(16).padStart(2, "0")).join("");
  }

  function span(text, state) {
    const el = document.createElement("span");
    el.textContent = text;
    for (const [key, value] of [["fg", state.fg], ["bg", state.bg]]) {
      if (!value) continue;
      if (value[0] === "c") el.classList.add("ansi-" + key + "-" + value.slice(1));
      else if (key === "fg") el.style.color = value; else el.style.backgroundColor = value;
    }
    if (state.bold) el.classList.add("ansi-bold");
    if (state.italic) el.classList.add("ansi-italic");
    if (state.underline) el.classList.add("ansi-underline");
    return el;
  }

  // Appends `text` with its colours to `parent`; returns the text without escapes (for filtering).
  function render(parent, text) {
    const state = { fg: null, bg: null, bold: false, italic: false, underline: false };
    let plain = "";
    let last = 0;
    let match;
    SGR.lastIndex = 0;
    while ((match = SGR.exec(text)) !== null) {
      const chunk = text.slice(last, match.index).replace(OTHER, "");
      if (chunk) { parent.appendChild(span(chunk, state)); plain += chunk; }
      applyCodes(state, match[1] === "" ? [0] : match[1].split(";").map(Number));
      last = SGR.lastIndex;
    }
    const rest = text.slice(last).replace(OTHER, "");
    if (rest) { parent.appendChild(span(rest, state)); plain += rest; }
    return plain;
  }

  window.tasklogAnsi = { render: render };
})();
