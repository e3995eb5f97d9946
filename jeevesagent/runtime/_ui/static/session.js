// A session's page: its facts and outcome, the actions (signal / approve, fork, cancel), the
// timeline as a bar per row with its duration, counts by kind, and live views of its streams.
"use strict";

(function () {
  setupToken();
  const sid = new URLSearchParams(location.search).get("id") || "";
  document.getElementById("sid").textContent = sid;
  document.title = `${sid} · jeevesagent runtime`;
  const forkNew = document.getElementById("fork-new");
  forkNew.value = `${sid}-fork-${Math.random().toString(36).slice(2, 7)}`;
  const sigName = document.getElementById("sig-name");
  let sigNameTouched = false;
  sigName.addEventListener("input", () => { sigNameTouched = true; });
  const watching = new Map(); // stream name -> EventSource

  function fact(dl, name, value) {
    dl.append(el("dt", { text: name }), el("dd", { text: value }));
  }

  function render(page) {
    const info = page.session;
    const status = info ? info.status : "not in the sessions table";
    const badge = document.getElementById("status");
    badge.textContent = status;
    badge.className = `status s-${status}`;
    document.body.dataset.status = status;
    const dl = document.getElementById("facts");
    dl.replaceChildren();
    if (info) {
      fact(dl, "workflow", info.workflow || "- (a plain session)");
      fact(dl, "owner", info.owner || "-");
      fact(dl, "created", when(info.created_at));
      fact(dl, "last activity", when(info.updated_at));
      if (info.cancel_requested) fact(dl, "cancel", "requested");
    }
    fact(dl, "waiting for", page.waiting_text || "-");
    const pending = page.pending_signals;
    fact(dl, "pending signals", pending.count ? `${pending.count} (${pending.names.join(", ")})` : "none");

    const outcome = document.getElementById("outcome");
    const o = page.outcome;
    outcome.textContent = !o ? "" :
      o.failure ? `failed: ${o.failure[0]}: ${o.failure[1]}` :
      o.value != null ? `result: ${o.value}` :
      o.note ? `${o.status}: ${o.note}` : o.status;
    outcome.className = "outcome" + (o ? ` s-${o.status}` : "");

    const waitSignal = page.waiting_for && page.waiting_for.kind === "signal" ? page.waiting_for.name : null;
    document.getElementById("signal-title").textContent =
      waitSignal ? `Approve: the session waits for signal “${waitSignal}”` : "Send a signal";
    document.getElementById("signal-form").classList.toggle("asked", !!waitSignal);
    if (!sigNameTouched) sigName.value = waitSignal || sigName.value || "approve";

    const at = document.getElementById("fork-at");
    const chosen = at.value;
    const steps = [...new Set(page.rows.filter((r) => r.kind === "step" || r.kind === "stream")
      .filter((r) => r.kind === "step" || r.key.startsWith("s:")).map((r) => r.stream || r.name))];
    at.replaceChildren(el("option", { value: "", text: "(the whole journal)" }),
      ...steps.map((n) => el("option", { value: n, text: `before “${n}”` })));
    at.value = steps.includes(chosen) ? chosen : "";

    renderCounts(document.getElementById("counts"), page.counts, null, null);
    renderTimeline(page.rows);
    for (const s of page.streams) {
      if (!watching.has(s.name) && !s.completed) watchStream(s.name);
      if (!watching.has(s.name) && !document.getElementById(`stream-btn-${s.name}`)) addStreamButton(s.name);
    }
  }

  function renderTimeline(rows) {
    const max = Math.max(0.001, ...rows.map((r) => r.duration));
    const list = document.getElementById("timeline");
    list.replaceChildren(...rows.map((r) => {
      const width = Math.max(0.5, (100 * r.duration) / max);
      return el("li", { class: `row k-${r.kind}`, "data-kind": r.kind, "data-name": r.name },
        el("span", { class: "kind", text: r.kind }),
        el("span", { class: "name", text: r.name, title: r.key }),
        el("span", { class: "track" }, el("span", { class: `bar k-${r.kind}`, width: `${width}%` })),
        el("span", { class: "dur", text: ago(r.duration), title: `recorded ${when(r.created_at)}` }),
        el("code", { class: r.shown ? "value" : "value hidden", text: r.preview }));
    }));
  }

  function addStreamButton(name) {
    const b = el("button", { type: "button", id: `stream-btn-${name}`, text: `Watch stream “${name}”` });
    b.addEventListener("click", () => { b.remove(); watchStream(name); });
    document.getElementById("streams").append(b);
  }

  function watchStream(name) {
    const box = el("section", { class: "panel stream", "data-stream": name },
      el("h2", { text: `Stream “${name}” ` }, el("span", { class: "state", text: "live" })),
      el("pre", { class: "chunks" }));
    document.getElementById("streams").append(box);
    const pre = box.querySelector("pre");
    const state = box.querySelector(".state");
    const q = new URLSearchParams({ id: sid, name });
    const source = new EventSource(`${JRT.root}/api/stream?${q}`);
    watching.set(name, source);
    source.addEventListener("chunk", (e) => { pre.append(JSON.parse(e.data).text); });
    source.addEventListener("end", () => { source.close(); state.textContent = "complete"; box.classList.add("done"); });
    source.addEventListener("failed", (e) => {
      source.close();
      state.textContent = "stopped: " + JSON.parse(e.data).error;
      box.classList.add("failed");
    });
  }

  follow(`/api/session/events?id=${encodeURIComponent(sid)}`, render, (e) => say(e.error, false));

  document.getElementById("signal-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await act("/api/signal", {
        session: sid, name: sigName.value.trim(), payload: document.getElementById("sig-payload").value,
      });
      say(`sent ${r.name} to ${r.session_id}`, true);
    } catch (err) { say(`not sent: ${err.message}`, false); }
  });
  document.getElementById("fork-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await act("/api/fork", {
        session: sid, new_session: forkNew.value.trim(), at: document.getElementById("fork-at").value,
      });
      say(`forked into ${r.session_id} (${r.status})`, true);
      const link = el("a", { href: `${JRT.root}/session?id=${encodeURIComponent(r.session_id)}`, text: ` open ${r.session_id}` });
      link.id = "fork-link";
      document.getElementById("message").append(link);
    } catch (err) { say(`not forked: ${err.message}`, false); }
  });
  document.getElementById("cancel-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await act("/api/cancel", { session: sid });
      say(`cancel: it was ${r.was}, it is ${r.status}`, true);
    } catch (err) { say(`not cancelled: ${err.message}`, false); }
  });
})();
