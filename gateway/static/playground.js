// Playground: a streamed chat with time to first token and tokens/s (and the tool calls of an
// answer, shown and never executed), embeddings compared, and an image tagged or described.
// All model text is inserted with textContent.
"use strict";

(() => {
  const { api, raw, readLines, el, $ } = AI;
  const history = [];
  let chatting = null;
  let image = null;

  function fillModels(select, models, role) {
    select.replaceChildren(el("option", `default (${role})`, { value: "" }),
      ...models.map((m) => el("option", m.name, { value: m.name })));
  }

  function say(role, text) {
    const node = el("div", text, { class: `msg ${role}` });
    $("chat-log").append(node);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
    return node;
  }

  function stats(started, first, tokens, now) {
    $("chat-ttft").textContent = first ? `TTFT ${Math.round(first - started)} ms` : "TTFT –";
    const seconds = (now - first) / 1000;
    $("chat-speed").textContent = first && tokens > 1 && seconds > 0
      ? `${((tokens - 1) / seconds).toFixed(1)} tokens/s` : "– tokens/s";
    $("chat-tokens").textContent = `${tokens} tokens`;
  }

  function busy(on) {
    $("chat-send").disabled = on;
    $("chat-stop").disabled = !on;
  }

  async function chat(event) {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || chatting) return;
    $("chat-error").textContent = "";
    let tools = null;
    try {
      tools = toolsGiven();
    } catch (error) {
      $("chat-error").textContent = `tools: ${error.message}`;
      return;
    }
    $("chat-input").value = "";
    history.push({ role: "user", content: text });
    say("user", text);
    const answer = say("assistant", "");
    const body = { messages: history, stream: true, max_tokens: Number($("chat-max").value) || 128 };
    if ($("chat-model").value) body.model = $("chat-model").value;
    if (tools) body.tools = tools;
    const calls = [];
    chatting = new AbortController();
    busy(true);
    const started = performance.now();
    let first = 0;
    let tokens = 0;
    try {
      const response = await raw("/api/chat", {
        method: "POST", body: JSON.stringify(body), signal: chatting.signal,
        headers: { "Content-Type": "application/json" },
      });
      await readLines(response, (line) => {
        if (!line.startsWith("data: ") || line === "data: [DONE]") return;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new AI.ApiError(500, chunk.error);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        for (const call of (delta && delta.tool_calls) || []) called(calls, call);
        const piece = delta && delta.content;
        if (piece) {
          if (!first) first = performance.now();
          tokens += 1;
          answer.textContent += piece;
          $("chat-log").scrollTop = $("chat-log").scrollHeight;
        }
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        stats(started, first, tokens, performance.now());
      });
      if (calls.length) {
        answer.remove();
        for (const call of calls) say("tool", `calls ${call.function.name}(${call.function.arguments})`);
        history.push({ role: "assistant", content: null, tool_calls: calls });
      } else {
        history.push({ role: "assistant", content: answer.textContent });
      }
    } catch (error) {
      if (error.name === "AbortError") {
        history.push({ role: "assistant", content: answer.textContent });
        say("error", "stopped");
      } else {
        $("chat-error").textContent = error.message;
        history.pop();
      }
    } finally {
      chatting = null;
      busy(false);
    }
  }

  // The tools box: a JSON array of OpenAI tool definitions, or nothing.
  function toolsGiven() {
    const given = $("chat-tools").value.trim();
    if (!given) return null;
    const tools = JSON.parse(given);
    if (!Array.isArray(tools)) throw new Error("a JSON array of tool definitions");
    return tools;
  }

  // A streamed tool-call delta: the first of a call has its id and name, the rest arguments.
  function called(calls, delta) {
    const call = calls[delta.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
    if (delta.id) call.id = delta.id;
    const fn = delta.function || {};
    if (fn.name) call.function.name = fn.name;
    call.function.arguments += fn.arguments || "";
  }

  async function embed(event) {
    event.preventDefault();
    $("embed-error").textContent = "";
    const body = { input: [$("embed-a").value, $("embed-b").value] };
    if ($("embed-model").value) body.model = $("embed-model").value;
    try {
      const result = await api("/api/generate-embeddings", { json: body });
      const [a, b] = result.embeddings;
      const dot = (x, y) => x.reduce((sum, v, i) => sum + v * y[i], 0);
      const cosine = dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b));
      $("embed-dims").textContent = result.dimensions;
      $("embed-cos").textContent = cosine.toFixed(3);
    } catch (error) {
      $("embed-error").textContent = error.message;
    }
  }

  function pick(file) {
    if (!file || !file.type.startsWith("image/")) {
      $("image-error").textContent = "choose an image file";
      return;
    }
    image = file;
    const preview = $("image-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    $("image-error").textContent = "";
    $("image-tag").disabled = false;
    $("image-describe").disabled = false;
  }

  async function vision(path) {
    $("image-error").textContent = "";
    const form = new FormData();
    form.append("image", image);
    if ($("image-model").value) form.append("model", $("image-model").value);
    for (const id of ["image-tag", "image-describe"]) $(id).disabled = true;
    try {
      const result = await api(path, { method: "POST", body: form });
      if (result.tags) $("image-tags").replaceChildren(...result.tags.map((t) => el("li", t)));
      if (result.description !== undefined) $("image-description").textContent = result.description;
    } catch (error) {
      $("image-error").textContent = error.message;
    } finally {
      for (const id of ["image-tag", "image-describe"]) $(id).disabled = false;
    }
  }

  AI.start(async () => {
    const pool = await api("/api/models");
    fillModels($("chat-model"), pool.models, "chat");
    fillModels($("embed-model"), pool.models, "embedding");
    fillModels($("image-model"), pool.models, "vision");
    $("chat-form").addEventListener("submit", chat);
    $("chat-stop").addEventListener("click", () => chatting && chatting.abort());
    window.addEventListener("pagehide", () => chatting && chatting.abort());
    $("chat-clear").addEventListener("click", () => { history.length = 0; $("chat-log").replaceChildren(); });
    $("embed-form").addEventListener("submit", embed);
    $("image-file").addEventListener("change", () => pick($("image-file").files[0]));
    $("image-tag").addEventListener("click", () => vision("/api/tag"));
    $("image-describe").addEventListener("click", () => vision("/api/describe"));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      pick(e.dataTransfer.files[0]);
    });
  });
})();
