// openllm-hub chat page: plain JavaScript, no build step, nothing loaded from elsewhere.
// Talks to the same server's OpenAI-compatible API (v1/chat/completions, streamed as SSE).
// Conversations and settings live in this browser (localStorage); the API key only for the tab
// (sessionStorage). Model text is always inserted as text, never as HTML.
"use strict";

(() => {
  const I18N = {
    en: {
      newChat: "New chat", history: "History", clearHistory: "Clear history", settings: "Settings",
      systemPrompt: "System prompt", systemPlaceholder: "Optional instructions for the assistant",
      temperature: "Temperature", topP: "Top p", maxTokens: "Max tokens", seed: "Seed", seedPlaceholder: "random",
      apiKey: "API key", apiKeyPlaceholder: "only if the server was started with an API key",
      reset: "Reset to model defaults", empty: "Ask anything. Answers appear as they are written.",
      placeholder: "Type a message…", keysHint: "Enter sends, Shift+Enter starts a new line", send: "Send", stop: "Stop",
      stoppedNote: "stopped", lengthNote: "cut at the max tokens limit", waiting: "Waiting for the model…",
      writing: "Writing…", stopped: "Stopped.", done: "{n} tokens in {time}", untitled: "New chat",
      needKey: "This server needs an API key: enter it in Settings.", error: "Error: {msg}",
      unreachable: "Cannot reach the server: is `openllm-hub serve` still running? ({msg})", confirmClear: "Delete all conversations?",
    },
    zh: {
      newChat: "新对话", history: "历史记录", clearHistory: "清空历史", settings: "设置",
      systemPrompt: "系统提示词", systemPlaceholder: "可选：给助手的指示",
      temperature: "温度", topP: "Top p", maxTokens: "最大生成长度", seed: "随机种子", seedPlaceholder: "随机",
      apiKey: "API 密钥", apiKeyPlaceholder: "仅当服务器设置了 API 密钥时需要",
      reset: "恢复模型默认值", empty: "有问题尽管问，回答会边生成边显示。",
      placeholder: "输入消息…", keysHint: "Enter 发送，Shift+Enter 换行", send: "发送", stop: "停止",
      stoppedNote: "已停止", lengthNote: "已达到最大生成长度", waiting: "等待模型…",
      writing: "正在生成…", stopped: "已停止。", done: "{n} 个 token，用时 {time}", untitled: "新对话",
      needKey: "此服务器需要 API 密钥：请在“设置”中填写。", error: "错误：{msg}",
      unreachable: "无法连接服务器：`openllm-hub serve` 是否仍在运行？（{msg}）", confirmClear: "删除所有对话？",
    },
  };
  const CHATS_KEY = "openllm-hub.chats";
  const SETTINGS_KEY = "openllm-hub.settings";
  const LANG_KEY = "openllm-hub.lang";
  const API_KEY_KEY = "openllm-hub.api-key";
  const MAX_CHATS = 50;

  const $ = (id) => document.getElementById(id);
  const els = {};
  for (const id of ["sidebar", "scrim", "new-chat", "history", "clear-history", "toggle-sidebar", "model-name",
    "toggle-settings", "lang", "settings", "system", "temperature", "temperature-value", "top-p", "top-p-value",
    "max-tokens", "seed", "api-key", "api-key-row", "reset-settings", "messages", "empty", "status", "composer",
    "input", "send", "stop"]) {
    els[id] = $(id);
  }

  const state = {
    lang: "en",
    chats: [],
    currentId: null,
    modelId: "default",
    defaults: { temperature: 0.8, top_p: 0.95 },
    maxTokensLimit: 2048,
    controller: null,
  };

  // ---- storage (private browsing may refuse it: then the page just forgets) ------------------
  function read(store, key, fallback) {
    try {
      const raw = store.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (e) {
      return fallback;
    }
  }
  function write(store, key, value) {
    try {
      store.setItem(key, JSON.stringify(value));
    } catch (e) { /* full or disabled */ }
  }

  // ---- language --------------------------------------------------------------------------------
  function t(key, vars) {
    let text = (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) text = text.replace("{" + k + "}", String(v));
    return text;
  }
  function applyLang() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
    for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
    els.lang.textContent = state.lang === "zh" ? "English" : "中文";
    els.lang.lang = state.lang === "zh" ? "en" : "zh";
    renderHistory();
    renderMessages();
  }

  // ---- settings --------------------------------------------------------------------------------
  function settings() {
    const seed = els.seed.value.trim();
    return {
      system: els.system.value,
      temperature: Number(els.temperature.value),
      top_p: Number(els["top-p"].value),
      max_tokens: Math.max(1, Math.min(state.maxTokensLimit, Math.round(Number(els["max-tokens"].value) || 1))),
      seed: seed === "" ? null : Math.max(0, Math.round(Number(seed))),
    };
  }
  function showSettingValues() {
    els["temperature-value"].textContent = Number(els.temperature.value).toFixed(2);
    els["top-p-value"].textContent = Number(els["top-p"].value).toFixed(2);
  }
  function saveSettings() {
    showSettingValues();
    const s = settings();
    write(localStorage, SETTINGS_KEY, { system: s.system, temperature: s.temperature, top_p: s.top_p,
      max_tokens: s.max_tokens, seed: s.seed });
  }
  function restoreSettings() {
    const s = read(localStorage, SETTINGS_KEY, null);
    if (s) {
      els.system.value = s.system || "";
      if (s.temperature != null) els.temperature.value = s.temperature;
      if (s.top_p != null) els["top-p"].value = s.top_p;
      if (s.max_tokens != null) els["max-tokens"].value = s.max_tokens;
      els.seed.value = s.seed == null ? "" : s.seed;
    }
    els["api-key"].value = read(sessionStorage, API_KEY_KEY, "");
    showSettingValues();
  }
  function resetSettings() {
    els.temperature.value = state.defaults.temperature;
    els["top-p"].value = state.defaults.top_p;
    els["max-tokens"].value = Math.min(512, state.maxTokensLimit);
    els.seed.value = "";
    saveSettings();
  }
  function toggleSettings(open) {
    const show = open === undefined ? els.settings.hidden : open;
    els.settings.hidden = !show;
    els["toggle-settings"].setAttribute("aria-expanded", String(show));
  }

  // ---- conversations ---------------------------------------------------------------------------
  function current() {
    return state.chats.find((c) => c.id === state.currentId);
  }
  function persist() {
    const kept = state.chats.filter((c) => c.messages.length > 0).slice(0, MAX_CHATS);
    write(localStorage, CHATS_KEY, { chats: kept, currentId: state.currentId });
  }
  function newChat() {
    stop();
    const chat = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8), title: "", messages: [] };
    state.chats = state.chats.filter((c) => c.messages.length > 0);
    state.chats.unshift(chat);
    state.currentId = chat.id;
    persist();
    renderHistory();
    renderMessages();
    setStatus("");
    closeSidebar();
    els.input.focus();
  }
  function openChat(id) {
    if (state.controller) return;
    state.currentId = id;
    persist();
    renderHistory();
    renderMessages();
    setStatus("");
    closeSidebar();
  }
  function clearHistory() {
    if (!window.confirm(t("confirmClear"))) return;
    state.chats = [];
    newChat();
  }

  // ---- rendering -------------------------------------------------------------------------------
  function bubble(role, text) {
    const el = document.createElement("div");
    el.className = "msg " + role;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    el.appendChild(body);
    els.messages.appendChild(el);
    els.empty.hidden = true;
    return el;
  }
  function addNote(el, text) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = text;
    el.appendChild(note);
  }
  function renderMessage(m) {
    const el = bubble(m.role, m.content);
    if (m.stopped) addNote(el, t("stoppedNote"));
    if (m.finish === "length") addNote(el, t("lengthNote"));
    if (m.error) addNote(el, t("error", { msg: m.error }));
    return el;
  }
  function renderMessages() {
    for (const el of Array.from(els.messages.querySelectorAll(".msg"))) {
      if (!el.classList.contains("streaming")) el.remove();
    }
    if (state.controller) return; // the live answer keeps its place
    const chat = current();
    const messages = chat ? chat.messages : [];
    for (const m of messages) renderMessage(m);
    els.empty.hidden = messages.length > 0;
    scrollDown();
  }
  function renderHistory() {
    els.history.replaceChildren();
    for (const chat of state.chats) {
      if (chat.messages.length === 0 && chat.id !== state.currentId) continue;
      const li = document.createElement("li");
      if (chat.id === state.currentId) li.className = "current";
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = chat.title || t("untitled");
      b.title = b.textContent;
      b.addEventListener("click", () => openChat(chat.id));
      li.appendChild(b);
      els.history.appendChild(li);
    }
  }
  function scrollDown() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }
  function setStatus(text) {
    els.status.textContent = text;
  }
  function setGenerating(on) {
    document.body.dataset.state = on ? "generating" : "idle";
    els.send.hidden = on;
    els.stop.hidden = !on;
    els.input.disabled = false;
  }
  function clearErrors() {
    // an error bubble describes the last failure only: it goes once a request works again
    for (const el of Array.from(els.messages.querySelectorAll(".msg.error"))) el.remove();
  }
  function formatDuration(ms) {
    // fast answers on small models take milliseconds: "0.0 s" would say nothing
    if (ms < 1) return "<1 ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }
  function showError(msg) {
    const el = bubble("error", t("error", { msg }));
    el.setAttribute("role", "alert");
    scrollDown();
  }
  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    els.scrim.hidden = true;
    els["toggle-sidebar"].setAttribute("aria-expanded", "false");
  }
  function toggleSidebar() {
    const open = !document.body.classList.contains("sidebar-open");
    document.body.classList.toggle("sidebar-open", open);
    els.scrim.hidden = !open;
    els["toggle-sidebar"].setAttribute("aria-expanded", String(open));
  }
  function autoGrow() {
    els.input.style.height = "auto";
    els.input.style.height = els.input.scrollHeight + "px";
  }

  // ---- the API -----------------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = els["api-key"].value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }
  function needKey() {
    toggleSettings(true);
    els["api-key-row"].classList.add("attention");
    setStatus(t("needKey"));
  }
  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return res.status + " " + res.statusText;
  }
  async function loadModel() {
    let res;
    try {
      res = await fetch("v1/models", { headers: headers() });
    } catch (e) {
      setStatus(t("unreachable", { msg: e.message || e }));
      return;
    }
    if (res.status === 401) {
      needKey();
      return;
    }
    if (!res.ok) {
      setStatus(t("error", { msg: await errorMessage(res) }));
      return;
    }
    els["api-key-row"].classList.remove("attention");
    if (els.status.textContent === t("needKey")) setStatus("");
    clearErrors();
    const card = (await res.json()).data[0];
    state.modelId = card.id;
    const meta = card.meta || {};
    els["model-name"].textContent = card.id + (meta.family ? " · " + meta.family : "");
    document.title = card.id + " · openllm-hub";
    if (meta.max_tokens_limit) {
      state.maxTokensLimit = meta.max_tokens_limit;
      els["max-tokens"].max = meta.max_tokens_limit;
    }
    if (meta.defaults) state.defaults = meta.defaults;
    if (!read(localStorage, SETTINGS_KEY, null)) resetSettings();
  }

  // Reads an SSE body; calls onData with each parsed `data:` payload until [DONE].
  async function readEvents(res, onData) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          if (onData(JSON.parse(data)) === false) return;
        }
      }
    }
  }

  async function send(text) {
    if (state.controller || !text.trim()) return;
    const chat = current();
    const userMsg = { role: "user", content: text };
    chat.messages.push(userMsg);
    if (!chat.title) chat.title = text.trim().slice(0, 60);
    renderHistory();
    renderMessage(userMsg);
    const answer = { role: "assistant", content: "" };
    const el = bubble("assistant", "");
    el.classList.add("streaming");
    const textEl = el.querySelector(".text");
    scrollDown();

    const s = settings();
    const messages = [];
    if (s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of chat.messages) messages.push({ role: m.role, content: m.content });
    const body = { model: state.modelId, messages, stream: true, stream_options: { include_usage: true },
      temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens };
    if (s.seed !== null) body.seed = s.seed;

    const controller = new AbortController();
    state.controller = controller;
    setGenerating(true);
    setStatus(t("waiting"));
    const t0 = performance.now();
    let error = null;
    let usage = null;
    try {
      const res = await fetch("v1/chat/completions", { method: "POST", headers: headers(),
        body: JSON.stringify(body), signal: controller.signal });
      if (!res.ok) {
        if (res.status === 401) needKey();
        error = await errorMessage(res);
      } else {
        await readEvents(res, (obj) => {
          if (obj.error) {
            error = obj.error.message;
            return false;
          }
          if (obj.usage) usage = obj.usage;
          const choice = obj.choices && obj.choices[0];
          if (!choice) return true;
          if (choice.delta && choice.delta.content) {
            if (!answer.content) setStatus(t("writing"));
            answer.content += choice.delta.content;
            textEl.textContent = answer.content;
            scrollDown();
          }
          if (choice.finish_reason) answer.finish = choice.finish_reason;
          return true;
        });
      }
    } catch (e) {
      if (e.name === "AbortError") answer.stopped = true;
      // fetch rejects with a TypeError only when no HTTP answer came at all (server down, network)
      else if (e instanceof TypeError) error = t("unreachable", { msg: e.message || String(e) });
      else error = e.message || String(e);
    }
    state.controller = null;
    el.remove();
    if (error && !answer.content) {
      // nothing came back: undo the turn and give the text back to edit or resend
      chat.messages.pop();
      renderMessages();
      els.input.value = text;
      autoGrow();
      showError(error);
      setStatus("");
    } else {
      if (!error) clearErrors();
      if (error) answer.error = error;
      chat.messages.push(answer);
      renderMessage(answer);
      if (answer.stopped) setStatus(t("stopped"));
      else if (usage) setStatus(t("done", { n: usage.completion_tokens, time: formatDuration(performance.now() - t0) }));
      else setStatus("");
    }
    persist();
    setGenerating(false);
    scrollDown();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  // ---- wiring --------------------------------------------------------------------------------------
  function init() {
    const saved = read(localStorage, LANG_KEY, null);
    state.lang = saved || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
    const stored = read(localStorage, CHATS_KEY, { chats: [], currentId: null });
    state.chats = Array.isArray(stored.chats) ? stored.chats : [];
    state.currentId = stored.currentId;
    if (!current()) {
      state.chats.unshift({ id: "c" + Date.now().toString(36), title: "", messages: [] });
      state.currentId = state.chats[0].id;
    }
    restoreSettings();
    applyLang();
    setGenerating(false);

    els.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = els.input.value;
      if (!text.trim() || state.controller) return;
      els.input.value = "";
      autoGrow();
      send(text);
    });
    els.input.addEventListener("keydown", (e) => {
      // Enter sends, Shift+Enter breaks the line; never while an input method is composing (Chinese)
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        els.composer.requestSubmit();
      }
    });
    els.input.addEventListener("input", autoGrow);
    els.stop.addEventListener("click", stop);
    els["new-chat"].addEventListener("click", newChat);
    els["clear-history"].addEventListener("click", clearHistory);
    els["toggle-sidebar"].addEventListener("click", toggleSidebar);
    els.scrim.addEventListener("click", closeSidebar);
    els["toggle-settings"].addEventListener("click", () => toggleSettings());
    els.settings.addEventListener("input", saveSettings);
    els.settings.addEventListener("submit", (e) => e.preventDefault());
    els["reset-settings"].addEventListener("click", resetSettings);
    els["api-key"].addEventListener("change", () => {
      write(sessionStorage, API_KEY_KEY, els["api-key"].value.trim());
      loadModel();
    });
    els.lang.addEventListener("click", () => {
      state.lang = state.lang === "zh" ? "en" : "zh";
      write(localStorage, LANG_KEY, state.lang);
      applyLang();
    });
    loadModel();
    els.input.focus();
  }

  init();
})();
