// Adds this kiosk's CSRF token (the csrf-token meta tag) to every form posted from its pages, so
// that the server can tell them from forms on other sites (see device/kiosk/security.py).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post" || !meta) return;
  let field = form.querySelector('input[name="csrf_token"]');
  if (!field) {
    field = document.createElement("input");
    field.type = "hidden";
    field.name = "csrf_token";
    form.appendChild(field);
  }
  field.value = meta.content;
}, true);
