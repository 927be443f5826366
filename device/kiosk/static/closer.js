// Bedside result page: "Look closer". Tapping the image (or the button) opens it full screen at
// full resolution; pinch, the mouse wheel or the + / - buttons zoom, dragging pans, and in
// brightness mode dragging sets brightness (left-right) and contrast (up-down). Reset puts it all
// back. The page works without this file: the image is simply not enlarged.
"use strict";

const ZOOM = { min: 1, max: 12, step: 1.5, wheel: 1.15 }; // scale limits; one button press; one wheel notch

document.addEventListener("DOMContentLoaded", () => {
  const dialog = document.querySelector("[data-closer]");
  if (!dialog) return;
  const stage = dialog.querySelector("[data-closer-stage]");
  const img = dialog.querySelector("[data-closer-img]");
  const modeButton = dialog.querySelector("[data-closer-mode]");
  const view = { scale: 1, x: 0, y: 0, brightness: 1, contrast: 1, adjust: false };
  const pointers = new Map();
  let pinch = null;

  const apply = () => {
    img.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    img.style.filter = `brightness(${view.brightness}) contrast(${view.contrast})`;
    dialog.dataset.scale = view.scale.toFixed(2);
    dialog.dataset.brightness = view.brightness.toFixed(2);
  };
  const reset = () => {
    Object.assign(view, { scale: 1, x: 0, y: 0, brightness: 1, contrast: 1 });
    apply();
  };
  // Zoom by `factor` keeping the point (cx, cy) of the stage where it is.
  const zoom = (factor, cx, cy) => {
    const next = Math.min(ZOOM.max, Math.max(ZOOM.min, view.scale * factor));
    const rect = stage.getBoundingClientRect();
    const px = cx - rect.left - rect.width / 2;
    const py = cy - rect.top - rect.height / 2;
    view.x = px - ((px - view.x) * next) / view.scale;
    view.y = py - ((py - view.y) * next) / view.scale;
    view.scale = next;
    if (next === ZOOM.min) { view.x = 0; view.y = 0; }
    apply();
  };
  const centre = () => {
    const rect = stage.getBoundingClientRect();
    return [rect.left + rect.width / 2, rect.top + rect.height / 2];
  };

  const open = () => {
    if (!img.getAttribute("src")) img.src = img.dataset.src; // fetched the first time it is opened
    reset();
    dialog.showModal();
  };
  for (const opener of document.querySelectorAll("[data-closer-open]")) {
    opener.addEventListener("click", open);
    opener.hidden = false; // the button is only offered where this script runs
  }
  dialog.querySelector("[data-closer-close]").addEventListener("click", () => dialog.close());
  dialog.querySelector("[data-closer-reset]").addEventListener("click", reset);
  dialog.querySelector("[data-closer-in]").addEventListener("click", () => zoom(ZOOM.step, ...centre()));
  dialog.querySelector("[data-closer-out]").addEventListener("click", () => zoom(1 / ZOOM.step, ...centre()));
  modeButton.addEventListener("click", () => {
    view.adjust = !view.adjust;
    modeButton.setAttribute("aria-pressed", String(view.adjust));
  });

  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoom(e.deltaY < 0 ? ZOOM.wheel : 1 / ZOOM.wheel, e.clientX, e.clientY);
  }, { passive: false });
  stage.addEventListener("pointerdown", (e) => {
    stage.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 2) {
      const [[ax, ay], [bx, by]] = pointers.values();
      pinch = Math.hypot(ax - bx, ay - by);
    }
  });
  stage.addEventListener("pointermove", (e) => {
    const last = pointers.get(e.pointerId);
    if (!last) return;
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 2 && pinch) {
      const [[ax, ay], [bx, by]] = pointers.values();
      const distance = Math.hypot(ax - bx, ay - by);
      zoom(distance / pinch, (ax + bx) / 2, (ay + by) / 2);
      pinch = distance;
      return;
    }
    const dx = e.clientX - last[0];
    const dy = e.clientY - last[1];
    if (view.adjust) {
      view.brightness = Math.min(3, Math.max(0.2, view.brightness + dx / 300));
      view.contrast = Math.min(4, Math.max(0.2, view.contrast - dy / 300));
    } else {
      view.x += dx;
      view.y += dy;
    }
    apply();
  });
  const release = (e) => {
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
  };
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);
});
