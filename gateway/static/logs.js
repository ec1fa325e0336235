// Logs: one model's llama-server output (cli mode: its runs'), streamed with fetch (the key goes in a header,
// never in a URL, which EventSource would need) and capped in the page.
"use strict";

(() => {
  const { api, raw, readLines, el, $ } = AI;
  const CAP = 1000;
  let reading = null;

  function append(text) {
    const log = $("log");
    log.append(el("div", text));
    while (log.childElementCount > CAP) log.firstElementChild.remove();
    if ($("log-scroll").checked) log.scrollTop = log.scrollHeight;
  }

  function stop() {
    if (reading) reading.abort();
    reading = null;
    $("log-stop").disabled = true;
    $("log-follow").disabled = false;
  }

  async function follow() {
    stop();
    const name = $("log-model").value;
    const replica = Number($("log-replica").value) || 0;
    $("log").replaceChildren();
    reading = new AbortController();
    $("log-stop").disabled = false;
    $("log-follow").disabled = true;
    $("log-status").textContent = `following ${name}…`;
    try {
      const path = `/api/logs/${encodeURIComponent(name)}?replica=${replica}`;
      const response = await raw(path, { signal: reading.signal });
      await readLines(response, (line) => {
        if (line.trim()) append(JSON.parse(line).line);
      });
      $("log-status").textContent = "the stream ended";
    } catch (error) {
      $("log-status").textContent = error.name === "AbortError" ? "stopped" : error.message;
    }
    stop();
  }

  AI.start(async (who) => {
    $("log-cap").textContent = CAP;
    if (!who.admin) {
      $("logs-denied").hidden = false;
      $("logs-form").hidden = true;
      return;
    }
    const pool = await api("/api/models");
    $("log-model").replaceChildren(...pool.models.map((m) => el("option", m.name, { value: m.name })));
    const params = new URLSearchParams(location.search);
    if (params.get("model")) $("log-model").value = params.get("model");
    $("logs-form").addEventListener("submit", (event) => { event.preventDefault(); follow(); });
    $("log-stop").addEventListener("click", stop);
    // Leaving the page must close the stream: the browser may keep the connection open.
    window.addEventListener("pagehide", stop);
    follow();
  });
})();
