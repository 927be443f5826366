// Bedside kiosk: small progressive enhancements. Every page works without this file.
"use strict";

const WORKLIST_REFRESH_MS = 3000;

document.addEventListener("DOMContentLoaded", () => {
  // Drag and drop onto the upload zone, and show which file was chosen.
  for (const zone of document.querySelectorAll("[data-drop]")) {
    const input = zone.querySelector("input[type=file]");
    const text = zone.querySelector("[data-drop-text]");
    const show = () => {
      if (input.files.length) {
        text.textContent = input.files[0].name;
        zone.classList.add("chosen");
      }
    };
    input.addEventListener("change", show);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show();
      }
    });
  }

  // Busy state: one tap submits once, and the button tapped says what is happening (its own
  // data-busy, else the form's).
  for (const form of document.querySelectorAll("form[data-busy]")) {
    form.addEventListener("submit", (e) => {
      const button = e.submitter || form.querySelector("button[type=submit]");
      if (button) {
        const busy = button.dataset.busy || form.dataset.busy;
        form.querySelectorAll("button[type=submit]").forEach((b) => { b.disabled = true; });
        if (busy) button.textContent = busy;
      }
    });
  }

  // Heatmap overlay toggle without a page load (the link still works without script).
  for (const toggle of document.querySelectorAll("[data-heatmap-toggle]")) {
    const viewer = toggle.closest("[data-viewer]");
    const plain = viewer.querySelector("[data-plain]");
    const heat = viewer.querySelector("[data-heat]");
    const legend = viewer.querySelector("[data-heat-legend]");
    const flip = (e) => {
      e.preventDefault();
      const on = heat.hidden;
      if (on && !heat.getAttribute("src")) heat.src = heat.dataset.src;  // fetched the first time it is shown
      heat.hidden = !on;
      legend.hidden = !on;
      plain.hidden = on;
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Hide heatmap" : "Show heatmap";
    };
    toggle.addEventListener("click", flip);
    toggle.addEventListener("keydown", (e) => { if (e.key === " ") flip(e); });
  }

  // Worklist: new studies (uploads, imports, captures) appear without a reload. The panel is
  // fetched again every few seconds and swapped in only when what it lists changed; otherwise
  // only the waiting times are brought up to date, so a tap is never lost to a redraw.
  for (const panel of document.querySelectorAll("[data-worklist]")) {
    let current = panel;
    const refresh = async () => {
      try {
        const response = await fetch(current.dataset.worklist, {cache: "no-store", credentials: "same-origin"});
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("[data-worklist]");
        if (!fresh) return;
        if (fresh.dataset.signature !== current.dataset.signature) {
          current.replaceWith(fresh);
          current = fresh;
          return;
        }
        const now = fresh.querySelectorAll(".waiting");
        current.querySelectorAll(".waiting").forEach((el, i) => { if (now[i]) el.textContent = now[i].textContent; });
      } catch (err) {
        // The kiosk is restarting or the network blipped: the next round tries again.
      }
    };
    setInterval(refresh, WORKLIST_REFRESH_MS);
  }

  // Undo after Mark reviewed: offered for a few seconds, counted down on the button; then Reopen.
  for (const undo of document.querySelectorAll("form[data-undo]")) {
    const button = undo.querySelector("button");
    const reopen = document.querySelector("form[data-reopen]");
    let left = Number(undo.dataset.undo);
    const tick = () => {
      if (left <= 0) {
        clearInterval(timer);
        undo.hidden = true;
        if (reopen) reopen.hidden = false;
        return;
      }
      button.textContent = "Undo (" + left + " s)";
      left -= 1;
    };
    const timer = setInterval(tick, 1000);
    tick();
  }

  // Import list: select every file at once.
  for (const button of document.querySelectorAll("[data-select-all]")) {
    button.addEventListener("click", () => {
      const boxes = button.closest("form").querySelectorAll("input[name=path]");
      const all = Array.from(boxes).every((b) => b.checked);
      boxes.forEach((b) => { b.checked = !all; });
    });
  }
});
