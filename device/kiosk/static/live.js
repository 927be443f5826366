// Bedside live page: the picture and the result always describe one frame. Each round asks for the
// newest result (/latest), loads the picture of its frame (the judged frame with that result drawn
// on it) into the hidden one of two <img>, and only once it has loaded shows picture and result
// together and points Capture at that frame. Without this script the page shows the MJPEG stream
// (the same pairs) and Capture stores the newest pair.
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

  const panel = root.querySelector("[data-live-result]");
  const word = panel.querySelector("[data-live-word]");
  const line = panel.querySelector("[data-live-line]");
  const note = panel.querySelector("[data-live-note]");
  const frameText = root.querySelector("[data-live-frame]");
  const frameInput = root.querySelector("[data-live-frame-input]");
  const pictures = root.querySelectorAll("[data-live-picture]");
  const notice = root.querySelector("[data-live-unavailable]");
  const finding = panel.dataset.finding;
  const set = (el, text) => { if (el.textContent !== text) el.textContent = text; };  // no needless announcements
  const show = (triage, text, aside) => {
    panel.className = "banner live-result banner-" + (triage ? triage.toLowerCase() : "pending");
    panel.dataset.triage = triage;
    set(word, triage || "WAITING");
    set(line, text);
    set(note, aside);
  };
  const present = (r) => {
    if (r.triage === "UNGRADABLE") {
      // The reasons, as every screen words them (device/decision/triage.py, cannot_assess).
      const reasons = r.result.reasons || r.result.quality.issues;
      const why = reasons.length ? reasons[0].message : "The frame failed the quality checks";
      show(r.triage, "Cannot assess: " + why.charAt(0).toLowerCase() + why.slice(1), reasons.length ? reasons[0].action : "");
    } else {
      // Within 0.1 of the operating point the call could go either way: say so in words.
      const borderline = Math.abs(r.probability - r.result.threshold) < BORDERLINE ? "Borderline: close to the decision point. " : "";
      if (r.triage === "URGENT") show(r.triage, "Suspected " + finding + " - review first", borderline);
      else show(r.triage, "Not flagged for " + finding, borderline + panel.dataset.routineNote);
    }
    panel.dataset.frame = r.frame.seq;
    frameInput.value = r.frame.seq;
    frameText.textContent = "Frame " + r.frame.seq + ", taken " + new Date(r.frame.captured_at).toLocaleTimeString();
  };

  let showing = 0;
  let shownSeq = null;
  let loading = false;
  const round = async () => {
    if (loading) return;
    try {
      const response = await fetch(panel.dataset.latest, { cache: "no-store" });
      notice.hidden = true;
      if (response.status === 404) {
        if (shownSeq === null) show("", "Waiting for the first result from this camera", "");
        return;
      }
      if (!response.ok) return;
      const r = await response.json();
      if (r.frame.seq === shownSeq) return;
      const next = pictures[1 - showing];
      loading = true;
      next.onload = () => {
        loading = false;
        next.hidden = false;
        pictures[showing].hidden = true;
        next.dataset.frame = r.frame.seq;
        showing = 1 - showing;
        shownSeq = r.frame.seq;
        present(r);
      };
      next.onerror = () => { loading = false; };  // no longer kept: the next round asks again
      next.src = r.picture;
    } catch (err) {
      notice.hidden = false;
      show("", "The kiosk is not answering", "");
      frameInput.value = "";
    }
  };
  setInterval(round, Number(root.dataset.pollMs));
  round();
});
