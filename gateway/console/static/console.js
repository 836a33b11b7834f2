// The console's one script: opens the dialogs, checks what is typed as it is typed, and sends
// each change to the admin API (/api/v1/...) with the session cookie and the page's CSRF
// token. The server decides: every rule checked here is checked there again, and its refusal,
// put in words, is shown next to the field it is about. No inline script: the page's data is
// in data- attributes and in one JSON block (#console-messages).
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const CSRF = csrfMeta ? csrfMeta.getAttribute("content") : "";
  const table = document.getElementById("console-messages");
  const MESSAGES = table ? JSON.parse(table.textContent) : { reasons: {}, fallback: "" };
  const KEY_NAME_MAX = 64;

  function said(reason, message) {
    const entry = MESSAGES.reasons[reason];
    if (entry && entry.text) { return entry.text; }
    return message || MESSAGES.fallback;
  }

  function fieldOf(reason) {
    const entry = MESSAGES.reasons[reason];
    return entry ? entry.field : null;
  }

  async function callApi(method, path, body) {
    const init = { method: method, credentials: "same-origin",
                   headers: { "X-CSRF-Token": CSRF, "Accept": "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return { ok: false, reason: "unreachable", message: "" };
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (response.ok) { return { ok: true, data: data }; }
    return { ok: false, status: response.status,
             reason: (data && data.error) || "internal_error",
             message: (data && data.message) || "" };
  }

  function reloadWith(notice, name) {
    const query = new URLSearchParams({ notice: notice });
    if (name) { query.set("name", name); }
    window.location.assign(window.location.pathname + "?" + query.toString());
  }

  // --- errors next to what caused them ---------------------------------------------------------

  function errorSlot(form, field) {
    return form.querySelector('[data-error-for="' + field + '"]');
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (slot) {
      slot.textContent = "";
      slot.classList.remove("shown");
    });
    form.querySelectorAll("[aria-invalid]").forEach(function (input) {
      input.removeAttribute("aria-invalid");
    });
  }

  function showError(form, reason, message) {
    const field = fieldOf(reason);
    let slot = field ? errorSlot(form, field) : null;
    const input = field ? form.querySelector('[name="' + field + '"]') : null;
    if (!slot) { slot = errorSlot(form, "form"); }
    slot.textContent = said(reason, message);
    slot.classList.add("shown");
    if (reason === "session_expired" || reason === "credentials_required" ||
        reason === "bad_credentials" || reason === "unauthorized") {
      const link = document.createElement("a");
      link.href = "/signin?next=" + encodeURIComponent(window.location.pathname);
      link.textContent = " Sign in";
      slot.appendChild(link);
    }
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  // --- what is typed, checked as it is typed --------------------------------------------------

  function keyNameProblem(input) {
    const name = input.value;
    const taken = JSON.parse(input.dataset.taken || "[]").map(function (n) { return n.toLowerCase(); });
    const current = (input.dataset.current || "").toLowerCase();
    if (name.length === 0) { return "Give the key a name."; }
    if (name.length > KEY_NAME_MAX) { return "A key name has at most " + KEY_NAME_MAX + " characters."; }
    if (!/^[A-Za-z]/.test(name)) { return "A key name starts with a letter."; }
    if (!/^[A-Za-z0-9 -]*$/.test(name)) { return "Use only letters, digits, spaces and \u201c-\u201d."; }
    if (name !== name.trim()) { return "A key name does not end with a space."; }
    if (taken.indexOf(name.toLowerCase()) >= 0 && name.toLowerCase() !== current) {
      return "Another key of this tenant already has this name (whatever its case).";
    }
    return "";
  }

  function refresh(form) {
    form.querySelectorAll("[data-key-name]").forEach(function (input) {
      const problem = keyNameProblem(input);
      input.setCustomValidity(problem);
      const slot = errorSlot(form, input.name);
      if (slot && input.value.length > 0) {
        slot.textContent = problem;
        slot.classList.toggle("shown", problem !== "");
      }
    });
    form.querySelectorAll("[data-must-equal]").forEach(function (input) {
      const wanted = input.dataset.mustEqual;
      const matches = input.value === wanted;
      input.setCustomValidity(matches ? "" : "mismatch");
      const slot = errorSlot(form, input.name);
      if (slot) {
        slot.textContent = input.value && !matches
          ? "This is not the key's name as shown (it is case-sensitive)." : "";
        slot.classList.toggle("shown", Boolean(input.value) && !matches);
      }
    });
    const submit = form.querySelector('button[type="submit"]');
    if (submit && !form.dataset.busy) { submit.disabled = !form.checkValidity(); }
  }

  function bodyOf(form) {
    const body = JSON.parse(form.dataset.extra || "{}");
    form.querySelectorAll("[data-field]").forEach(function (input) {
      body[input.name] = input.dataset.field === "bool" ? input.checked : input.value;
    });
    return body;
  }

  // --- dialogs --------------------------------------------------------------------------------

  function openDialog(opener) {
    const dialog = document.getElementById(opener.dataset.dialog);
    if (!dialog) { return; }
    const form = dialog.querySelector("form.api-form");
    const label = opener.dataset.label || "";
    if (form) {
      form.reset();
      clearErrors(form);
      delete form.dataset.busy;
      const template = form.dataset.pathTemplate || form.dataset.path;
      form.dataset.pathTemplate = template;
      form.dataset.path = template.replace("{param}", encodeURIComponent(opener.dataset.param || ""));
      form.dataset.label = label;
      form.querySelectorAll("[data-must-equal]").forEach(function (input) {
        input.dataset.mustEqual = label;
      });
      form.querySelectorAll("[data-key-name]").forEach(function (input) {
        input.dataset.current = form.dataset.method === "PATCH" ? label : "";
        if (form.dataset.method === "PATCH") { input.value = label; }
      });
      form.hidden = false;
      refresh(form);
    }
    dialog.querySelectorAll('[data-slot="label"]').forEach(function (slot) {
      slot.textContent = label;
    });
    const secret = dialog.querySelector(".secret-step");
    if (secret) { secret.hidden = true; }
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      menu.removeAttribute("open");
    });
    dialog.showModal();
    const first = dialog.querySelector("input:not([type=hidden]), textarea, select");
    if (first) { first.focus(); }
  }

  async function submitForm(form) {
    clearErrors(form);
    refresh(form);
    if (!form.checkValidity()) { return; }
    const submit = form.querySelector('button[type="submit"]');
    form.dataset.busy = "1";
    submit.disabled = true;
    const result = await callApi(form.dataset.method, form.dataset.path, bodyOf(form));
    delete form.dataset.busy;
    if (!result.ok) {
      showError(form, result.reason, result.message);
      refresh(form);
      return;
    }
    if (form.dataset.after === "secret") {
      showSecret(form, result.data);
      return;
    }
    const name = form.dataset.doneName ? bodyOf(form)[form.dataset.doneName] : form.dataset.label;
    reloadWith(form.dataset.done, name);
  }

  // --- the new key's secret: shown once, CLOSE only once copied -------------------------------

  function showSecret(form, key) {
    const dialog = form.closest("dialog");
    const step = dialog.querySelector(".secret-step");
    const value = step.querySelector("#secret-value");
    const close = step.querySelector("#close-secret");
    const status = step.querySelector("#copy-status");
    value.value = key.secret;
    step.querySelectorAll('[data-slot="name"]').forEach(function (slot) { slot.textContent = key.name; });
    status.textContent = "";
    close.disabled = true;
    dialog.dataset.secretShown = "1";
    dialog.dataset.keyName = key.name;
    form.hidden = true;
    step.hidden = false;
    step.querySelector("#copy-secret").focus();
  }

  function copied(dialog) {
    const step = dialog.querySelector(".secret-step");
    step.querySelector("#close-secret").disabled = false;
    step.querySelector("#copy-status").textContent = "Copied to the clipboard. You can close this now.";
    dialog.dataset.copied = "1";
  }

  async function copySecret(button) {
    const dialog = button.closest("dialog");
    const value = dialog.querySelector("#secret-value");
    let done = false;
    try {
      await navigator.clipboard.writeText(value.value);
      done = true;
    } catch (error) {
      value.focus();
      value.select();
      try { done = document.execCommand("copy"); } catch (again) { done = false; }
    }
    if (done) {
      copied(dialog);
    } else {
      dialog.querySelector("#copy-status").textContent =
        "The browser did not copy it: select the key and copy it by hand (Ctrl+C).";
    }
  }

  function closeSecret(button) {
    button.closest("dialog").close();
  }

  function secretClosed(dialog) {
    // However the dialog closed once copied (CLOSE, Escape): the secret leaves the page, and
    // the page reloads to list the new key.
    const name = dialog.dataset.keyName;
    dialog.querySelector("#secret-value").value = "";
    delete dialog.dataset.secretShown;
    delete dialog.dataset.copied;
    reloadWith("key-created", name);
  }

  // --- the provisioning service toggle --------------------------------------------------------

  async function toggleService(button) {
    if (button.dataset.enabled === "true") {
      openDialog(button);
      return;
    }
    button.disabled = true;
    const result = await callApi("PUT", button.dataset.path, { enabled: true });
    if (result.ok) {
      reloadWith("service-enabled", "");
      return;
    }
    button.disabled = false;
    const slot = document.getElementById("service-error");
    slot.textContent = said(result.reason, result.message);
    slot.classList.add("shown");
  }

  // --- wiring ---------------------------------------------------------------------------------

  document.addEventListener("click", function (event) {
    const target = event.target.closest("button, summary");
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      if (!menu.contains(event.target)) { menu.removeAttribute("open"); }
    });
    if (!target) { return; }
    if (target.id === "service-toggle") { toggleService(target); return; }
    if (target.id === "copy-secret") { copySecret(target); return; }
    if (target.id === "close-secret") { closeSecret(target); return; }
    if (target.hasAttribute("data-close")) { target.closest("dialog").close(); return; }
    if (target.dataset.dialog) { openDialog(target); }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") { return; }
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      menu.removeAttribute("open");
      const summary = menu.querySelector("summary");
      if (summary) { summary.focus(); }
    });
  });

  document.querySelectorAll("dialog").forEach(function (dialog) {
    // The new key's dialog does not close (Escape included) before its secret was copied.
    dialog.addEventListener("cancel", function (event) {
      if (dialog.dataset.secretShown && !dialog.dataset.copied) { event.preventDefault(); }
    });
    dialog.addEventListener("copy", function (event) {
      if (dialog.dataset.secretShown && event.target.id === "secret-value") { copied(dialog); }
    });
    dialog.addEventListener("close", function () {
      if (dialog.dataset.secretShown) { secretClosed(dialog); }
    });
  });

  document.querySelectorAll("form.api-form").forEach(function (form) {
    form.addEventListener("input", function () { refresh(form); });
    form.addEventListener("change", function () { refresh(form); });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      submitForm(form);
    });
  });

  document.querySelectorAll("details.menu").forEach(function (menu) {
    menu.addEventListener("toggle", function () {
      if (!menu.open) { return; }
      document.querySelectorAll("details.menu[open]").forEach(function (other) {
        if (other !== menu) { other.removeAttribute("open"); }
      });
      const first = menu.querySelector(".menu-items a, .menu-items button");
      if (first) { first.focus(); }
    });
  });
}());
