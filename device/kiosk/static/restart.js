// The technician's restart page: ask /technician/started every two seconds until a process other
// than the one that was stopped answers, then say that the kiosk is back (and whether in safe mode);
// say so too when none has after a few minutes. The page works without this: it says to reload.
"use strict";

const EVERY_MS = 2000;
const GIVE_UP_MS = 180000;

document.addEventListener("DOMContentLoaded", () => {
  const page = document.querySelector("[data-restart]");
  if (!page) return;
  const state = page.querySelector("[data-restart-state]");
  const login = page.querySelector("[data-restart-login]");
  const began = Date.now();
  const ask = async () => {
    try {
      const response = await fetch("/technician/started", { cache: "no-store" });
      if (response.ok) {
        const now = await response.json();
        if (now.started_at !== page.dataset.started) {
          clearInterval(timer);
          page.dataset.back = now.safe_mode ? "safe" : "normal";
          state.textContent = now.safe_mode
            ? "The kiosk is back, but in safe mode: the cause is not fixed. Log in to see why."
            : "The kiosk is back and running (started " + new Date(now.started_at).toLocaleTimeString() + ").";
          login.hidden = false;
          return;
        }
      }
    } catch (err) {
      // Stopped, or starting: ask again.
    }
    if (Date.now() - began > GIVE_UP_MS) {
      clearInterval(timer);
      page.dataset.back = "no";
      state.textContent = "The kiosk has not come back after three minutes. Look at the device: is it on? " +
        "If it is, restart it by its power switch and call for support if that does not help.";
    }
  };
  const timer = setInterval(ask, EVERY_MS);
});
