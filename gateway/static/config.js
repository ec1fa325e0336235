// Config: the mode and the eight parameters, with ranges from /api/config/schema. The
// server validates; its 400 is shown next to the field its `param` names.
"use strict";

(() => {
  const { api, el, $ } = AI;
  let schema = null;
  let current = null;

  function range(s) {
    if (s.enum) return `one of ${s.enum.join(", ")}`;
    const low = s.minimum ?? s.exclusiveMinimum;
    const lowSign = s.minimum !== undefined ? "≥" : ">";
    return `${lowSign} ${low}, ≤ ${s.maximum} · default ${s.default}`;
  }

  function input(name, s) {
    if (s.enum) {
      const select = el("select", null, { id: `f-${name}`, name });
      s.enum.forEach((v) => select.append(el("option", v, { value: v })));
      return select;
    }
    const attrs = { id: `f-${name}`, name, type: "number", step: s.type === "integer" ? "1" : "any" };
    if (s.minimum !== undefined) attrs.min = s.minimum;
    if (s.maximum !== undefined) attrs.max = s.maximum;
    return el("input", null, attrs);
  }

  function field(name, s) {
    const box = el("div", null, { class: `field${s.restarts ? " restarts" : ""}`, "data-param": `llm_params.${name}` });
    box.append(el("label", name, { for: `f-${name}` }), input(name, s),
               el("p", `${s.description} (${range(s)})`, { class: "range" }),
               el("p", "", { class: "field-error", id: `err-llm_params.${name}` }));
    return box;
  }

  function fill() {
    $("f-backend").value = current.backend;
    for (const [name, value] of Object.entries(current.llm_params)) {
      const node = $(`f-${name}`);
      if (node) node.value = value;
    }
  }

  function clearErrors() {
    document.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
    document.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
    $("saved").textContent = "";
  }

  function showError(error) {
    const param = error.param === "llm_mode" ? "backend" : error.param;
    const target = param && document.getElementById(`err-${param}`);
    if (target) {
      target.textContent = error.message;
      target.closest(".field").classList.add("invalid");
      target.closest(".field").querySelector("input, select").focus();
    } else {
      $("form-error").textContent = error.message;
    }
  }

  // What the form changes: {backend?, llm_params?}, values as the user typed them (numbers
  // where they parse), so the server judges them.
  function changes() {
    const update = {};
    if ($("f-backend").value !== current.backend) update.backend = $("f-backend").value;
    const params = {};
    for (const [name, s] of Object.entries(schema.llm_params)) {
      const text = $(`f-${name}`).value.trim();
      const value = text === "" ? text : Number(text);
      if (String(value) !== String(current.llm_params[name])) params[name] = Number.isNaN(value) ? text : value;
    }
    if (Object.keys(params).length) update.llm_params = params;
    return update;
  }

  function restartReason(update) {
    const names = Object.keys(update.llm_params || {}).filter((n) => schema.llm_params[n].restarts);
    if (update.backend === "cli") return "Switching to cli mode stops every llama-server.";
    if (update.backend === "server") return "Switching to server mode starts llama-server for the default models.";
    if (names.length) return `Changing ${names.join(", ")} restarts each loaded llama-server after its requests finish.`;
    return null;
  }

  function confirmRestart(text) {
    return new Promise((resolve) => {
      const dialog = $("confirm");
      $("confirm-text").textContent = text;
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
      dialog.showModal();
    });
  }

  // Shows each model's status as it changes, for 60 s or until all are settled.
  async function watchRestart() {
    $("restart").hidden = false;
    const events = $("restart-log");
    events.replaceChildren();
    const seen = {};
    const started = Date.now();
    while (Date.now() - started < 60000) {
      const pool = await api("/api/models");
      let settled = Date.now() - started > 3000;
      for (const m of pool.models) {
        const state = m.instances.length ? m.instances.map((i) => i.state).join("/") : m.status;
        if (seen[m.name] !== state) {
          events.append(el("li", `${new Date().toLocaleTimeString()} ${m.name}: ${state}`));
          seen[m.name] = state;
        }
        if (["loading", "unloading"].includes(m.status)) settled = false;
      }
      if (settled) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    events.append(el("li", "done"));
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    const update = changes();
    if (!Object.keys(update).length) { $("saved").textContent = "nothing changed"; return; }
    const reason = restartReason(update);
    if (reason && !(await confirmRestart(reason))) return;
    $("apply").disabled = true;
    try {
      current = await api("/api/config", { json: update });
      fill();
      $("saved").textContent = "saved";
      if (reason) await watchRestart();
    } catch (error) {
      showError(error);
    } finally {
      $("apply").disabled = false;
    }
  }

  AI.start(async (who) => {
    [schema, current] = await Promise.all([api("/api/config/schema"), api("/api/config")]);
    $("f-backend").replaceChildren(...schema.backend.enum.map((v) => el("option", v, { value: v })));
    $("params").replaceChildren(...Object.entries(schema.llm_params).map(([n, s]) => field(n, s)));
    fill();
    if (!who.admin) {
      $("readonly").hidden = false;
      document.querySelectorAll("#config-form input, #config-form select, #config-form button")
        .forEach((node) => { node.disabled = true; });
    }
    $("config-form").addEventListener("submit", submit);
    $("reset").addEventListener("click", () => { clearErrors(); fill(); });
  });
})();
