"use strict";
// Shared by the pages: API calls (with the optional API key), labels and numbers for display.
const vitrina = (() => {
  const KEY_STORAGE = "vitrina-api-key";

  const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

  function setApiKey(value) {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  /** fetch() that sends the API key and throws an Error with the server's message on failure. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (apiKey()) headers.set("X-API-Key", apiKey());
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch {
      throw Object.assign(new Error("The server cannot be reached. Is it still running?"), { status: 0 });
    }
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        detail = (await response.json()).detail || detail;
      } catch {
        // not JSON: keep the status line
      }
      throw Object.assign(new Error(detail), { status: response.status, retryAfter: response.headers.get("Retry-After") });
    }
    return response;
  }

  /** Shows the API key field when the server asks for a key; calls onKey after the user enters one. */
  function apiKeyField(onKey) {
    const field = document.getElementById("api-key-field");
    const input = document.getElementById("api-key");
    input.value = apiKey();
    input.addEventListener("change", () => {
      setApiKey(input.value.trim());
      onKey();
    });
    return {
      ask() {
        field.hidden = false;
        input.focus();
      },
    };
  }

  const label = (name) => name.charAt(0).toUpperCase() + name.slice(1);
  const percent = (p) => `${Math.round(p * 100)}%`;

  async function loadModel() {
    const chip = document.getElementById("model-chip");
    const model = await (await api("/v1/model")).json();
    chip.textContent = `${model.name} · ${model.labels.length} categories · version ${model.version}`;
    chip.title = `Loaded ${model.loaded_at}; backend ${model.backend}`;
    return model;
  }

  /** An element with optional class and text; children appended in order. */
  function el(tag, className, text, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    children.forEach((child) => child && node.append(child));
    return node;
  }

  return { api, apiKeyField, label, percent, loadModel, el };
})();
