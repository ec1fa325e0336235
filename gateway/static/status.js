// Status: the mode, every model and instance, refreshed every 2 s.
"use strict";

(() => {
  const { api, el, $ } = AI;
  let admin = false;
  let mode = "";

  function badge(text) { return el("span", text, { class: `badge ${text}` }); }

  function cell(content, cls) {
    const td = el("td", typeof content === "object" ? null : content);
    if (typeof content === "object" && content) td.append(content);
    if (cls) td.className = cls;
    return td;
  }

  async function act(name, action, button) {
    button.disabled = true;
    try {
      await api(`/api/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    } catch (error) {
      AI.banner(`${action} ${name}: ${error.message}`);
    }
    refresh();
  }

  function actions(model) {
    const td = el("td");
    if (!admin || mode !== "server" || !model.instances) return td;
    const busy = ["loading", "unloading"].includes(model.status);
    const loaded = model.status === "loaded";
    const button = el("button", loaded ? "Unload" : "Load", { type: "button", class: "small secondary" });
    button.dataset.model = model.name;
    button.disabled = busy;
    button.addEventListener("click", () => act(model.name, loaded ? "unload" : "load", button));
    td.append(button);
    return td;
  }

  function modelRow(model) {
    const name = el("td");
    name.append(el("b", model.name));
    if (model.aliases.length) name.append(el("div", model.aliases.join(", "), { class: "aliases" }));
    const memory = model.memory_mb ? `${model.memory_mb} MB${model.memory_source === "estimate" ? " (est.)" : ""}` : "–";
    const row = el("tr", null, { "data-model": model.name });
    row.append(name, cell(model.roles.join(", ") || "–"), cell(badge(model.status)), cell(memory, "num"),
               cell(model.in_flight, "num"), cell(model.queued, "num"), actions(model));
    return row;
  }

  // Why an instance is not serving: its last error, a remote's cooldown, missing RPC workers.
  function why(i) {
    const parts = [];
    if (i.cooldown_s) parts.push(`cooldown ${Math.ceil(i.cooldown_s)} s`);
    if (i.missing_workers && i.missing_workers.length) parts.push(`waiting for RPC workers ${i.missing_workers.join(", ")}`);
    if (i.reason) parts.push(i.reason);
    return parts.join(": ");
  }

  function instanceRows(model) {
    return (model.instances || []).map((i) => {
      const port = i.url ? new URL(i.url).port : "–";
      const row = el("tr");
      row.append(cell(model.name), cell(i.instance), cell(badge(i.state)), cell(i.pid ?? "–", "num"),
                 cell(port, "num"), cell(i.restarts ?? "–", "num"), cell(i.in_flight ?? 0, "num"),
                 cell(why(i), "error-cell"));
      return row;
    });
  }

  function failures(models) {
    const failed = models.filter((m) => m.last_error && ["failed", "backoff", "unavailable"].includes(m.status));
    $("failures").hidden = !failed.length;
    $("failure-list").replaceChildren(...failed.map((m) => {
      const box = el("div");
      box.append(el("h3", `${m.name}: ${m.status}`), el("pre", m.last_error));
      return box;
    }));
  }

  // Admins: who is using each model's share (GET /api/clients).
  async function clients() {
    const body = await api("/api/clients");
    const rows = body.lanes.flatMap((lane) => Object.entries(lane.clients).map(([name, c]) => {
      const row = el("tr");
      row.append(cell(lane.model || lane.backend), cell(name), cell(c.in_flight, "num"),
                 cell(c.queued, "num"), cell(c.refused, "num"));
      return row;
    }));
    $("clients").hidden = false;
    $("client-table").tBodies[0].replaceChildren(...rows);
    $("clients-empty").hidden = rows.length > 0;
    // Model requests since the gateway started, by client and the API they spoke.
    const spoken = Object.entries(body.requests).flatMap(([name, dialects]) =>
      Object.entries(dialects).map(([dialect, n]) => {
        const row = el("tr");
        row.append(cell(name), cell(dialect), cell(n, "num"));
        return row;
      }));
    $("dialect-table").tBodies[0].replaceChildren(...spoken);
  }

  async function refresh() {
    const [pool, config] = await Promise.all([api("/api/models"), api("/api/config")]);
    mode = config.backend;
    const m = $("mode");
    m.textContent = mode;
    m.className = `value badge ${mode}`;
    $("memory").textContent = `${pool.memory_used_mb} / ${pool.memory_budget_mb} MB`;
    $("updated").textContent = new Date().toLocaleTimeString();
    $("models").tBodies[0].replaceChildren(...pool.models.map(modelRow));
    $("models-empty").hidden = pool.models.length > 0;
    const rows = pool.models.flatMap(instanceRows);
    $("instances").tBodies[0].replaceChildren(...rows);
    $("instances-empty").hidden = rows.length > 0;
    failures(pool.models);
    if (admin) await clients();
  }

  AI.start((who) => {
    admin = who.admin;
    AI.every(2000, refresh);
  });
})();
