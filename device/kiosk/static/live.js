// Bedside live page: keep the source's state and numbers current (the video itself is a plain <img>
// fed by the server's MJPEG stream, and Capture is a plain form, so the page works without this).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.querySelector("[data-live]");
  if (!root) return;
  const state = root.querySelector("[data-live-state]");
  const numbers = root.querySelector("[data-live-numbers]");
  const refresh = async () => {
    try {
      const response = await fetch(root.dataset.live, { cache: "no-store" });
      if (!response.ok) return;
      const s = await response.json();
      state.textContent = s.state + (s.reason ? ": " + s.reason : "");
      state.className = "live-state live-state-" + s.state;
      const latency = s.triage.latency_ms.p50;
      numbers.textContent = s.fps.toFixed(1) + " fps · " + s.frames + " frames · " + s.reconnects +
        " reconnects" + (latency === null ? "" : " · " + latency.toFixed(0) + " ms to result");
    } catch (err) {
      state.textContent = "kiosk not answering";
    }
  };
  setInterval(refresh, 1000);
  // The server caps how many live views run at once (503 "busy"): say so instead of a broken image.
  const video = root.querySelector("img.shot");
  const notice = root.querySelector("[data-live-unavailable]");
  const showNotice = () => {
    notice.hidden = false;
  };
  video.addEventListener("error", showNotice);
  if (video.complete && video.naturalWidth === 0) showNotice(); // it failed before this script ran
});
