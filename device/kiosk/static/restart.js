// The technician's restart page: "Restart now" is sent from this page (its script loaded while the
// kiosk still runs), then /technician/started is asked every two seconds until a process other than
// the one that was stopped answers: the page says the kiosk is back (and whether in safe mode), or,
// after three minutes, that it is not. Without this script the form posts as usual.
"use strict";

const EVERY_MS = 2000;
const GIVE_UP_MS = 180000;

document.addEventListener("DOMContentLoaded", () => {
  const page = document.querySelector("[data-restart]");
  const form = page && page.querySelector("[data-restart-form]");
  if (!form) return;
  const state = page.querySelector("[data-restart-state]");
  const login = page.querySelector("[data-restart-login]");
  const say = (text) => { state.textContent = text; };
  const watch = () => {
    const began = Date.now();
    const ask = async () => {
      try {
        const response = await fetch("/technician/started", { cache: "no-store" });
        if (response.ok) {
          const now = await response.json();
          if (now.started_at !== page.dataset.started) {
            clearInterval(timer);
            page.dataset.back = now.safe_mode ? "safe" : "normal";
            say(now.safe_mode
              ? "The kiosk is back, but in safe mode: the cause is not fixed. Log in to see why."
              : "The kiosk is back and running (started " + new Date(now.started_at).toLocaleTimeString() + ").");
            login.hidden = false;
            return;
          }
        }
      } catch (err) {
        // Stopped, or still starting: ask again.
      }
      if (Date.now() - began > GIVE_UP_MS) {
        clearInterval(timer);
        page.dataset.back = "no";
        say("The kiosk has not come back after three minutes. Look at the device: is it on? If it is, " +
          "switch it off and on, and call for support if that does not help.");
      }
    };
    const timer = setInterval(ask, EVERY_MS);
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();  // csrf.js has added the token already (it listens first)
    page.querySelector("[data-restart-ask]").hidden = true;
    page.querySelector("h1").textContent = "Restarting the kiosk";
    state.hidden = false;
    try {
      await fetch(form.action, { method: "POST", body: new FormData(form) });
    } catch (err) {
      // The kiosk may stop before its answer is read: watch all the same.
    }
    watch();
  });
});
