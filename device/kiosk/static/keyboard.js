// Bedside on-screen keyboard: a bedside kiosk has no physical keyboard. It opens under a focused
// text field and types into it (the field keeps the focus, so the page's own forms work as usual).
// <body data-keyboard>: "always", "auto" (only while the kiosk runs full screen) or "off"
// (ui.on_screen_keyboard in the settings file).
"use strict";

const ROWS = [
  ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "-"],
  ["q", "w", "e", "r", "t", "y", "u", "i", "o", "p", "/"],
  ["a", "s", "d", "f", "g", "h", "j", "k", "l", "'", "#"],
  ["Shift", "z", "x", "c", "v", "b", "n", "m", ",", ".", "Backspace"],
  ["Space", "Done"],
];
const LABELS = { Shift: "⇧ Shift", Backspace: "⌫", Space: "Space", Done: "Done" };
const TEXT_FIELDS = "input:not([type]), input[type=text], input[type=search], textarea";

document.addEventListener("DOMContentLoaded", () => {
  const mode = document.body.dataset.keyboard;
  const wanted = () => mode === "always" || (mode === "auto" && matchMedia("(display-mode: fullscreen)").matches);
  if (mode === "off") return;

  const board = document.createElement("div");
  board.className = "osk";
  board.hidden = true;
  board.setAttribute("role", "group");
  board.setAttribute("aria-label", "On-screen keyboard");
  let target = null;
  let shift = false;

  const type = (key) => {
    if (!target) return;
    const start = target.selectionStart ?? target.value.length;
    const end = target.selectionEnd ?? target.value.length;
    if (key === "Backspace") {
      const from = start === end ? Math.max(0, start - 1) : start;
      target.setRangeText("", from, end, "end");
    } else {
      const text = key === "Space" ? " " : shift ? key.toUpperCase() : key;
      if (target.maxLength > 0 && target.value.length >= target.maxLength) return;
      target.setRangeText(text, start, end, "end");
    }
    target.dispatchEvent(new Event("input", { bubbles: true }));
  };
  const relabel = () => {
    for (const b of board.querySelectorAll("[data-key]")) {
      const key = b.dataset.key;
      if (key.length === 1) b.textContent = shift ? key.toUpperCase() : key;
    }
    board.querySelector("[data-key=Shift]").setAttribute("aria-pressed", String(shift));
  };
  for (const row of ROWS) {
    const line = document.createElement("div");
    line.className = "osk-row";
    for (const key of row) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "osk-key osk-" + key.toLowerCase();
      b.dataset.key = key;
      b.textContent = LABELS[key] || key;
      if (key === "Backspace") b.setAttribute("aria-label", "Delete");
      // Keep the focus in the field: a tap on a key must not blur it.
      b.addEventListener("pointerdown", (e) => e.preventDefault());
      b.addEventListener("click", () => {
        if (key === "Shift") { shift = !shift; relabel(); return; }
        if (key === "Done") { close(); return; }
        type(key);
        if (shift && key.length === 1) { shift = false; relabel(); }
      });
      line.appendChild(b);
    }
    board.appendChild(line);
  }
  document.body.appendChild(board);

  const open = (field) => {
    target = field;
    board.hidden = false;
    document.body.classList.add("osk-open");
    field.scrollIntoView({ block: "center" });
  };
  const close = () => {
    board.hidden = true;
    document.body.classList.remove("osk-open");
    if (target) target.blur();
    target = null;
  };
  // A tap that takes the focus out of the field (on Triage, say) must land where it was aimed.
  // Closing the keyboard drops the page's bottom padding, which moves the page under the finger
  // between the press and the release, and the click then lands elsewhere or nowhere. So a press
  // outside the keyboard closes it only once its click has reached its target (or, with no click,
  // soon after the release).
  let pressed = false;
  let closeAfterTap = false;
  const afterTap = () => {
    pressed = false;
    if (closeAfterTap) {
      closeAfterTap = false;
      setTimeout(close, 0);  // after the click's own handlers and default action (the form's submit)
    }
  };
  document.addEventListener("pointerdown", (e) => { pressed = !board.contains(e.target); }, true);
  document.addEventListener("click", afterTap, true);
  const noClick = () => setTimeout(() => { if (closeAfterTap) afterTap(); }, 400);
  document.addEventListener("pointerup", noClick, true);
  document.addEventListener("pointercancel", noClick, true);
  document.addEventListener("focusin", (e) => {
    if (e.target.matches(TEXT_FIELDS) && wanted()) {
      closeAfterTap = false;
      open(e.target);
    } else if (!board.contains(e.target)) {
      if (pressed && !board.hidden) closeAfterTap = true;
      else close();
    }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !board.hidden) close(); });
});
