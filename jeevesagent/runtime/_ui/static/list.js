// The sessions list: counts by status, filters, the table, live over server-sent events, and the
// form that starts a workflow session.
"use strict";

(function () {
  setupToken();
  const statusSel = document.getElementById("f-status");
  const workflowSel = document.getElementById("f-workflow");
  const params = new URLSearchParams(location.search);
  let source = null;
  let knownWorkflows = [];

  function query() {
    const q = new URLSearchParams();
    if (statusSel.value) q.set("status", statusSel.value);
    if (workflowSel.value) q.set("workflow", workflowSel.value);
    return q.toString();
  }

  function render(page) {
    renderCounts(document.getElementById("counts"), page.counts, (status) => {
      statusSel.value = statusSel.value === status ? "" : status;
      refollow();
    }, statusSel.value);
    if (statusSel.options.length === 1) {
      for (const s of Object.keys(page.counts)) statusSel.append(el("option", { value: s, text: s }));
      if (params.get("status")) statusSel.value = params.get("status");
    }
    const names = page.workflows.join("\n");
    if (names !== knownWorkflows.join("\n")) {
      knownWorkflows = page.workflows;
      const chosen = workflowSel.value || params.get("workflow") || "";
      workflowSel.replaceChildren(el("option", { value: "", text: "any" }),
        ...page.workflows.map((w) => el("option", { value: w, text: w })));
      workflowSel.value = chosen;
      document.getElementById("workflow-names").replaceChildren(
        ...page.workflows.map((w) => el("option", { value: w })));
    }
    const rows = document.getElementById("rows");
    rows.replaceChildren(...page.sessions.map((s) => {
      const link = el("a", { href: `${JRT.root}/session?id=${encodeURIComponent(s.session_id)}`, text: s.session_id });
      const tr = el("tr", { "data-session": s.session_id },
        el("td", {}, link),
        el("td", {}, statusBadge(s.status), s.cancel_requested && s.status !== "cancelled" ? " (cancel requested)" : ""),
        el("td", { text: s.workflow || "-" }),
        el("td", { text: ago(page.now - s.created_at) }),
        el("td", { text: ago(page.now - s.updated_at) + " ago", title: when(s.updated_at) }),
        el("td", { class: "num", text: String(s.steps) }),
        el("td", { class: "waiting", text: s.waiting_text || "" }));
      return tr;
    }));
    const shown = page.sessions.length;
    document.getElementById("shown").textContent =
      shown < page.total ? `${shown} of ${page.total} shown` : `${page.total} session${page.total === 1 ? "" : "s"}`;
  }

  function refollow() {
    if (source) source.close();
    const q = query();
    history.replaceState(null, "", q ? `?${q}` : location.pathname);
    source = follow(`/api/sessions/events?${q}`, render);
  }

  statusSel.addEventListener("change", refollow);
  workflowSel.addEventListener("change", refollow);
  for (const s of ["pending", "running", "waiting", "completed", "failed", "cancelled", "interrupted", "imported"]) {
    statusSel.append(el("option", { value: s, text: s }));
  }
  statusSel.value = params.get("status") || "";
  if (params.get("workflow")) {
    workflowSel.append(el("option", { value: params.get("workflow"), text: params.get("workflow") }));
    workflowSel.value = params.get("workflow");
  }
  refollow();

  document.getElementById("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const workflow = document.getElementById("s-workflow").value.trim();
    const session = document.getElementById("s-session").value.trim();
    let args, kwargs;
    try {
      args = JSON.parse(document.getElementById("s-args").value || "[]");
      kwargs = JSON.parse(document.getElementById("s-kwargs").value || "{}");
    } catch (err) {
      say(`the arguments are not JSON: ${err.message}`, false);
      return;
    }
    try {
      const r = await act("/api/start", { workflow, session, args, kwargs });
      say(`started ${r.session_id} (${r.workflow}): ${r.status}`, true);
    } catch (err) {
      say(`not started: ${err.message}`, false);
    }
  });
})();
