// What both pages share: the page's settings, the token field, actions (JSON POSTs with the
// CSRF header and the bearer token), live updates over server-sent events, and small helpers.
// Values are put on the page as text (textContent), never as HTML.
"use strict";

const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const JRT = { root: meta("jrt-root"), csrf: meta("jrt-csrf"), auth: meta("jrt-auth") };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "width") node.style.width = v; // CSSOM: allowed by the page's CSP
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setupToken() {
  const box = document.getElementById("token-box");
  const input = document.getElementById("token");
  box.addEventListener("submit", (e) => e.preventDefault());
  if (JRT.auth !== "token") {
    box.hidden = true;
    return;
  }
  input.value = sessionStorage.getItem("jrt-token") || "";
  input.addEventListener("input", () => sessionStorage.setItem("jrt-token", input.value));
}

async function act(path, body) {
  const headers = { "Content-Type": "application/json", "X-Jeevesagent-Csrf": JRT.csrf };
  const token = sessionStorage.getItem("jrt-token") || "";
  if (JRT.auth === "token" && token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(JRT.root + path, {
    method: "POST", headers, body: JSON.stringify(body), credentials: "omit",
  });
  let data;
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function say(text, ok) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = "message " + (ok ? "ok" : "error");
}

// Follow server-sent events at `path`: `onData(json)` for each page sent; the live badge shows
// the connection (EventSource reconnects by itself).
function follow(path, onData, onGone) {
  const live = document.getElementById("live");
  const source = new EventSource(JRT.root + path);
  source.onopen = () => { live.textContent = "● live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "○ reconnecting"; live.className = "live"; };
  source.onmessage = (e) => onData(JSON.parse(e.data));
  source.addEventListener("gone", (e) => {
    source.close();
    live.textContent = "○ gone";
    if (onGone) onGone(JSON.parse(e.data));
  });
  return source;
}

function ago(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${Math.floor(seconds % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function when(epoch) {
  return epoch == null ? "-" : new Date(epoch * 1000).toLocaleString();
}

function statusBadge(status) {
  return el("span", { class: `status s-${status}`, text: status });
}

function renderCounts(node, counts, onPick, picked) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  node.replaceChildren();
  for (const [name, n] of Object.entries(counts)) {
    const chip = el("button", { type: "button", class: `count s-${name}` + (picked === name ? " picked" : "") },
      el("span", { class: "n", text: String(n) }), " " + name,
      el("span", { class: "meter" }, el("span", { class: `fill s-${name}`, width: `${(100 * n) / total}%` })));
    chip.dataset.status = name;
    if (onPick) chip.addEventListener("click", () => onPick(name));
    else chip.disabled = true;
    node.append(chip);
  }
}
