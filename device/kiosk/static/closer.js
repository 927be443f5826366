// Bedside result page: "Look closer". Tapping the image (or the button) opens it full screen at
// full resolution; pinch, the mouse wheel or the + / - buttons zoom, dragging pans. In the adjust
// mode dragging changes the image: for a grayscale DICOM the window (left-right: width, up-down:
// level), computed here from the file's own values and starting from its own window centre/width;
// for other images brightness (left-right) and contrast (up-down). Reset puts it all back. The
// page works without this file: the image is simply not enlarged.
"use strict";

const ZOOM = { min: 1, max: 12, step: 1.5, wheel: 1.15 }; // scale limits; one button press; one wheel notch
const WINDOW_DRAG = 300; // pixels of drag that change the window by its starting width

// PS3.3 C.11.2.1.2, as device/intake/dicom.py applies it: a value to [0, 1].
const windowed = (x, center, width, fn) => {
  if (fn === "SIGMOID") return 1 / (1 + Math.exp((-4 * (x - center)) / width));
  const y = fn === "LINEAR_EXACT" ? (x - center) / width + 0.5 : (x - (center - 0.5)) / (width - 1) + 0.5;
  return Math.min(1, Math.max(0, y));
};

// A grayscale DICOM's values (uint16 codes, value = offset + step * code) drawn on a canvas
// through the current window. Uint16Array reads the little-endian codes the kiosk sends on every
// machine it runs on (x86, ARM).
class WindowedImage {
  constructor(meta, buffer) {
    this.meta = meta;
    this.codes = new Uint16Array(buffer);
    this.canvas = document.createElement("canvas");
    this.canvas.width = meta.columns;
    this.canvas.height = meta.rows;
    this.canvas.setAttribute("role", "img");
    this.canvas.dataset.closerCanvas = "";
    this.context = this.canvas.getContext("2d");
    this.image = this.context.createImageData(meta.columns, meta.rows);
    this.image.data.fill(255); // opaque; draw() sets the gray
    let top = 0;
    for (const c of this.codes) if (c > top) top = c;
    this.levels = top + 1;
  }

  draw(center, width) {
    const { offset, step, invert, function: fn } = this.meta;
    const lut = new Uint8ClampedArray(this.levels);
    for (let i = 0; i < this.levels; i++) {
      const y = windowed(offset + step * i, center, width, fn);
      lut[i] = Math.floor((invert ? 1 - y : y) * 255 + 0.5);
    }
    const px = this.image.data;
    const codes = this.codes;
    for (let p = 0, q = 0; p < codes.length; p++, q += 4) {
      const g = lut[codes[p]];
      px[q] = g;
      px[q + 1] = g;
      px[q + 2] = g;
    }
    this.context.putImageData(this.image, 0, 0);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const dialog = document.querySelector("[data-closer]");
  if (!dialog) return;
  const stage = dialog.querySelector("[data-closer-stage]");
  const img = dialog.querySelector("[data-closer-img]");
  const modeButton = dialog.querySelector("[data-closer-mode]");
  const readout = dialog.querySelector("[data-closer-readout]");
  const view = { scale: 1, x: 0, y: 0, brightness: 1, contrast: 1, center: 0, width: 1, adjust: false };
  const pointers = new Map();
  let pinch = null;
  let windowing = null; // a WindowedImage once a DICOM's values are here
  let drawQueued = false;

  const redraw = () => {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      windowing.draw(view.center, view.width);
      dialog.dataset.windowCenter = view.center.toFixed(1);
      dialog.dataset.windowWidth = view.width.toFixed(1);
      dialog.dataset.drawn = String(Number(dialog.dataset.drawn || 0) + 1);
      readout.textContent = `Window: level ${Math.round(view.center)}, width ${Math.round(view.width)}`;
    });
  };
  const apply = () => {
    const shown = windowing ? windowing.canvas : img;
    shown.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    if (windowing) redraw();
    else img.style.filter = `brightness(${view.brightness}) contrast(${view.contrast})`;
    dialog.dataset.scale = view.scale.toFixed(2);
    dialog.dataset.brightness = view.brightness.toFixed(2);
  };
  const reset = () => {
    Object.assign(view, { scale: 1, x: 0, y: 0, brightness: 1, contrast: 1 });
    if (windowing) Object.assign(view, { center: windowing.meta.center, width: windowing.meta.width });
    apply();
  };
  // A DICOM: its values and its own window, then the canvas replaces the JPEG.
  const fetched = async (url) => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response;
  };
  const loadWindow = async () => {
    const meta = await (await fetched(dialog.dataset.window)).json();
    const buffer = await (await fetched(meta.values)).arrayBuffer();
    windowing = new WindowedImage(meta, buffer);
    windowing.canvas.setAttribute("aria-label", img.alt);
    img.replaceWith(windowing.canvas);
    readout.hidden = false;
    readout.title = `Starts from ${meta.origin}: level ${meta.center}, width ${meta.width}`;
    reset();
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
    if (!img.getAttribute("src")) {
      img.src = img.dataset.src; // fetched the first time it is opened
      // A colour DICOM has no window: brightness and contrast then, as for other images.
      if (dialog.dataset.window) loadWindow().catch(() => { modeButton.textContent = "Brightness / contrast"; });
    }
    reset();
    back = { x: window.scrollX, y: window.scrollY };
    dialog.showModal();
  };
  // However it closes (Close, Escape), the page is left where it was: the focus going back to the
  // opener must not scroll the banner away.
  let back = null;
  dialog.addEventListener("close", () => {
    if (back) window.scrollTo(back.x, back.y);
  });
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
    if (view.adjust && windowing) {
      const unit = windowing.meta.width / WINDOW_DRAG;
      view.width = Math.max(2, view.width + dx * unit);
      view.center += dy * unit;
    } else if (view.adjust) {
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
