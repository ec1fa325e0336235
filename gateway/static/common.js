// Shared by every view: the key (sessionStorage only), API calls with it, and helpers that
// insert text as text: model output and log lines are only ever set as textContent.
"use strict";

const AI = (() => {
  const KEY = "ai-server-key";
  let who = null;
  const starters = [];

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.type = error.type || "http_error";
      this.param = error.param || null;
    }
  }

  function key() { return sessionStorage.getItem(KEY); }

  function headers(extra) {
    const h = new Headers(extra || {});
    const k = key();
    if (k) h.set("Authorization", `Bearer ${k}`);
    return h;
  }

  // fetch with the key; the Response as it is (for streams), an ApiError when not ok.
  async function raw(path, options = {}) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (!response.ok) {
      let body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      const error = new ApiError(response.status, body.error || {});
      if (response.status === 401) askForKey("The key was not accepted. Enter another one.");
      throw error;
    }
    return response;
  }

  async function api(path, options = {}) {
    const init = { ...options };
    if (options.json !== undefined) {
      init.method = options.method || "POST";
      init.body = JSON.stringify(options.json);
      init.headers = { "Content-Type": "application/json", ...(options.headers || {}) };
      delete init.json;
    }
    return (await raw(path, init)).json();
  }

  // Calls onLine(text) for each line of a streamed body until it ends or is aborted.
  async function readLines(response, onLine) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop();
      lines.forEach(onLine);
    }
    if (pending) onLine(pending);
  }

  // An element with text content (never parsed as HTML) and attributes.
  function el(tag, text, attrs = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function $(id) { return document.getElementById(id); }

  function banner(text) {
    const b = $("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  function askForKey(message) {
    $("key-message").textContent = message;
    $("key-panel").hidden = false;
    $("main").hidden = true;
    $("key-input").focus();
  }

  async function identify() {
    try {
      const response = await fetch("/api/whoami", { headers: headers() });
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) {
        askForKey(key() ? "The key was not accepted. Enter another one."
                        : "This server needs an API key.");
        return;
      }
      if (!response.ok) throw new ApiError(response.status, body.error || {});
      who = body;
    } catch (error) {
      banner(`Cannot reach the server: ${error.message}`);
      return;
    }
    $("key-panel").hidden = true;
    $("main").hidden = false;
    $("who").textContent = who.keys_required
      ? `${who.name}${who.admin ? " · admin" : ""}` : "no keys configured";
    $("change-key").hidden = !who.keys_required;
    for (const start of starters.splice(0)) {
      Promise.resolve().then(() => start(who)).catch((error) => banner(error.message));
    }
  }

  function start(fn) { starters.push(fn); }

  // Runs fn now and then every `ms`, never two at once; errors go to the banner.
  function every(ms, fn) {
    const tick = async () => {
      try { await fn(); banner(""); } catch (error) {
        if (error.status !== 401) banner(error.message);
      }
      setTimeout(tick, ms);
    };
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key-input").value.trim());
      $("key-input").value = "";
      identify();
    });
    $("change-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askForKey("Enter another key.");
    });
    identify();
  });

  return { api, raw, readLines, el, $, banner, start, every, ApiError, who: () => who };
})();
