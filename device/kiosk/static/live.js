// Bedside live page: keep the source's state and numbers current (the video itself is a plain <img>
// fed by the server's MJPEG stream, and Capture is a plain form, so the page works without this).
"use strict";

const BORDERLINE = 0.1;

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

  // The current result, large, beside the video: word, colour, a plain line and how clear-cut it is.
  const panel = root.querySelector("[data-live-result]");
  const word = panel.querySelector("[data-live-word]");
  const line = panel.querySelector("[data-live-line]");
  const confidence = panel.querySelector("[data-live-confidence]");
  const finding = panel.dataset.finding;
  const show = (triage, text, sure) => {
    panel.className = "banner live-result banner-" + (triage ? triage.toLowerCase() : "pending");
    panel.dataset.triage = triage;
    word.textContent = triage || "WAITING";
    line.textContent = text;
    confidence.textContent = sure;
  };
  const latest = async () => {
    try {
      const response = await fetch(panel.dataset.latest, { cache: "no-store" });
      if (response.status === 404) return show("", "Waiting for the first result from this camera", "");
      if (!response.ok) return;
      const r = await response.json();
      if (r.triage === "UNGRADABLE") {
        // The reasons, as every screen words them (device/decision/triage.py, cannot_assess).
        const reasons = r.result.reasons || r.result.quality.issues;
        const why = reasons.length ? reasons[0].message : "The frame failed the quality checks";
        return show(r.triage, "Cannot assess: " + why.charAt(0).toLowerCase() + why.slice(1),
          reasons.length ? reasons[0].action : "");
      }
      // Within 0.1 of the operating point the call could go either way: say so in words.
      const borderline = Math.abs(r.probability - r.result.threshold) < BORDERLINE;
      show(r.triage, r.triage === "URGENT" ? "Suspected " + finding + " - review first" : "No " + finding + " pattern found",
        borderline ? "Borderline: close to the decision point" : "Clear result");
    } catch (err) {
      show("", "The kiosk is not answering", "");
    }
  };
  setInterval(latest, 1000);
  // The server caps how many live views run at once (503 "busy"): say so instead of a broken image.
  const video = root.querySelector("img.shot");
  const notice = root.querySelector("[data-live-unavailable]");
  const showNotice = () => {
    notice.hidden = false;
  };
  video.addEventListener("error", showNotice);
  if (video.complete && video.naturalWidth === 0) showNotice(); // it failed before this script ran
});
