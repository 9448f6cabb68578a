// The chime console: one page per hash (#cluster, #nodes, ...), data from
// the JSON API with the token kept in sessionStorage, live updates through
// blocking queries (?index=N&wait=30s) on the page's first endpoint.
const $ = (s) => document.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
let generation = 0; // bumped on every navigation: an older watch loop stops

function token() { return sessionStorage.getItem("chime-token") || ""; }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (token()) headers["X-Chime-Token"] = token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!r.ok) {
    const msg = (data && data.message) || (data && data.error) || text || r.statusText;
    throw new Error(`${method} ${path}: ${r.status} ${msg}`);
  }
  return { data, index: Number(r.headers.get("X-Chime-Index") || 0) };
}

function showError(e) {
  const el = $("#error");
  if (!e) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = e.message || String(e);
}

function table(cols, rows) {
  const head = cols.map((c) => `<th>${esc(c[0])}</th>`).join("");
  const body = rows.map((r) => "<tr>" + cols.map((c) => `<td>${c[1](r)}</td>`).join("") + "</tr>").join("");
  return `<div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table></div>`;
}

function btn(label, action, arg) {
  return `<button data-action="${esc(action)}" data-arg="${esc(arg)}">${esc(label)}</button>`;
}

// confirm shows a dialog and resolves to true on Confirm. bodyHTML is
// trusted markup built here with esc'd values.
function confirmDialog(title, bodyHTML) {
  const d = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-body").innerHTML = bodyHTML;
  d.returnValue = "";
  d.showModal();
  return new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

const json = (v) => `<code>${esc(JSON.stringify(v ?? null))}</code>`;
const stateClass = (s) => (/error|unreachable|failed|down|lost/i.test(s || "") ? "bad" : /running|up|healthy|done|ok|alive/i.test(s || "") ? "good" : "");
const st = (s) => `<span class="${stateClass(s)}">${esc(s)}</span>`;

// observed is a VM's last observation in words: "running (booted), generation 7, on hv2".
const observed = (o, name) => (o ? `${st(o.state)}${o.reason ? " (" + esc(o.reason) + ")" : ""}, generation ${esc(o.generation)}, on ${esc(name[o.node_id] || o.node_id)}` : "—");

// failoverPlan is where every ha VM would restart if its node failed now,
// and whether admission control's reservation holds (GET /v1/failover).
function failoverPlan(plan) {
  if (!plan) return `<h3>Failover plan</h3><p>not available (ask the leader)</p>`;
  const r = plan.reservation;
  const res = r ? `<p id="reservation">HA reservation (tolerate ${esc(r.tolerate)} node failures, ${esc(r.protected_vms)} protected VMs): ${r.ok ? st("ok") : st("broken")} — ${esc(r.reason)}</p>` : "";
  const entries = plan.entries || [];
  if (!entries.length) return `<h3>Failover plan</h3>${res}<p>no ha VMs</p>`;
  return `<h3>Failover plan</h3>${res}` + table([
    ["VM", (e) => esc(e.vm_name)],
    ["runs on", (e) => esc(e.node_name || e.node_id)],
    ["would restart on", (e) => `<span class="failover-target" data-vm="${esc(e.vm_name)}">${esc(e.target_name || e.target || "nowhere")}</span>`],
    ["safe", (e) => (e.safe ? st("ok") : `<span class="bad">no</span>`)],
    ["why", (e) => esc(e.reason)],
  ], entries);
}

// dur prints a duration given in nanoseconds: 850ms, 12.3s, 4m5s.
function dur(ns) {
  const ms = Number(ns || 0) / 1e6;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  return s < 3600 ? `${Math.floor(s / 60)}m${s % 60}s` : `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

// expanded remembers which incidents the user opened or closed, across
// live re-renders (open incidents start expanded).
const expanded = {};
document.addEventListener("toggle", (ev) => {
  const id = ev.target.dataset && ev.target.dataset.incidentDetail;
  if (id) expanded[id] = ev.target.open;
}, true);

// incidentDetail is one incident's VMs and timeline, times relative to
// the failure's first evidence.
function incidentDetail(i) {
  const t0 = Date.parse(i.first_evidence);
  const rel = (t) => { const d = Date.parse(t) - t0; return (d < 0 ? "-" : "+") + dur(Math.abs(d) * 1e6); };
  const open = expanded[i.id] ?? (i.state === "open");
  return `<details class="incident-detail" data-incident-detail="${esc(i.id)}"${open ? " open" : ""}>
    <summary>Incident ${esc(i.id)}: ${esc(i.summary)} — ${esc(i.state)}${i.resolution ? " (" + esc(i.resolution) + ")" : ""}</summary>
    <p>First evidence ${esc(i.first_evidence)}; detected after ${esc(dur(i.time_to_detect))}${i.state === "resolved" ? `; recovered after ${esc(dur(i.time_to_recover))}` : ""}.
      Alarms: ${esc((i.alarms || []).map((a) => `${a.name} (${a.status})`).join(", ") || "none")}.</p>
    ${(i.vms || []).length ? table([
      ["VM", (v) => esc(v.name)], ["ha", (v) => esc(v.ha)],
      ["recovered", (v) => (v.recovered_at ? st(v.outcome) : `<span class="bad">not yet</span>`)],
      ["after", (v) => (v.recovered_at ? esc(rel(v.recovered_at)) : "")],
    ], i.vms) : ""}
    ${table([
      ["at", (e) => esc(rel(e.time))], ["kind", (e) => esc(e.kind)], ["event", (e) => esc(e.event_seq || "")],
      ["by", (e) => esc(e.actor || "")], ["message", (e) => esc(e.message)],
    ], i.timeline || [])}
    ${i.dropped ? `<p>${esc(i.dropped)} more entries not kept (see Events).</p>` : ""}
  </details>`;
}

// Pages: endpoints to read (the first is watched), and a render function.
const pages = {
  cluster: {
    reads: ["/v1/operator/raft/peers", "/v1/status", "/v1/operator/members", "/v1/operator/ha"],
    render: ([peers, status, members, ha]) => `
      <h2>Cluster</h2>
      <p>This server: <b>${esc(status.name)}</b>, raft ${st(status.raft_state)}, applied index ${esc(status.applied_index)},
        ${status.healthy ? st("healthy") : st("unhealthy")}. Leader: <b id="leader">${esc(status.leader)}</b>.
        Automatic HA: ${ha && ha.armed ? st("armed") : st("disarmed")}.</p>
      <h3>Raft peers</h3>
      ${table([["id", (p) => esc(p.id)], ["address", (p) => esc(p.address)], ["leader", (p) => (p.leader ? "★ leader" : "")], ["voter", (p) => esc(p.voter)]], peers || [])}
      <h3>Members (gossip)</h3>
      ${table([["name", (m) => esc(m.name)], ["address", (m) => esc(m.addr)], ["state", (m) => st(m.state)]], members || [])}`,
  },
  nodes: {
    reads: ["/v1/nodes", "/v1/vms", "/v1/failover"],
    render: ([nodes, vms, plan]) => {
      const count = {};
      for (const v of vms || []) if (v.node_id) count[v.node_id] = (count[v.node_id] || 0) + 1;
      return `<h2>Nodes</h2>` + table([
        ["name", (n) => esc(n.name)],
        ["management", (n) => `<span class="mgmt" data-node="${esc(n.name)}">${esc(n.management_state)}</span>${n.local_drain_state ? " (" + esc(n.local_drain_state) + ")" : ""}`],
        ["monitor", (n) => st(n.monitor_state)],
        ["faults", (n) => esc((n.faults || []).join(", "))],
        ["capacity", (n) => `${esc(n.vcpus)} vCPU, ${esc(n.memory_mib)} MiB`],
        ["VMs", (n) => esc(count[n.id] || 0)],
        ["fenced", (n) => (n.fenced ? st("fenced") : "")],
        ["actions", (n) => ["enable", "disable", "drain", "evacuate", "rebuild"].map((a) => btn(a, "node-" + a, n.name)).join("")],
      ], nodes || []) + failoverPlan(plan);
    },
  },
  vms: {
    reads: ["/v1/vms", "/v1/nodes"],
    render: ([vms, nodes]) => {
      const name = {};
      for (const n of nodes || []) name[n.id] = n.name;
      return `<h2>VMs</h2>` + table([
        ["name", (v) => esc(v.name)],
        ["state", (v) => `<span class="vm-state" data-vm="${esc(v.name)}">${esc(v.state)}</span> (desired ${esc(v.desired_state)})`],
        ["node", (v) => `<span class="vm-node" data-vm="${esc(v.name)}">${esc(name[v.node_id] || v.node_id || "—")}</span>`],
        ["generation", (v) => esc(v.generation)],
        ["observed", (v) => observed(v.observed, name)],
        ["task", (v) => (v.task_id ? `<a href="#tasks">${esc(v.task_id.slice(0, 8))}</a>` : "")],
        ["migration", (v) => (v.migration ? json(v.migration) : "")],
        ["actions", (v) => ["start", "stop", "restart", "migrate", "delete"].map((a) => btn(a, "vm-" + a, v.name)).join("")],
      ], vms || []);
    },
  },
  tasks: {
    reads: ["/v1/tasks"],
    render: ([tasks]) => `<h2>Tasks (live)</h2>` + table([
      ["id", (t) => esc((t.id || "").slice(0, 8))],
      ["kind", (t) => esc(t.kind)],
      ["state", (t) => `<span class="task-state" data-task="${esc(t.id)}" data-kind="${esc(t.kind)}" data-vm="${esc(t.vm_id || "")}">${st(t.state)}</span>`],
      ["node / VM", (t) => esc([t.node_id, t.vm_id].filter(Boolean).join(" / "))],
      ["steps", (t) => (t.steps || []).map((s) => `${esc(s.vm_id.slice(0, 8))} ${esc(s.from || "")}→${esc(s.to || "")} ${st(s.state)} ${esc(s.error || "")}`).join("<br>")],
      ["error", (t) => esc(t.error)],
      ["updated", (t) => esc(t.updated)],
    ], (tasks || []).slice().reverse()),
  },
  alarms: {
    reads: ["/v1/alarms"],
    render: ([alarms]) => `<h2>Alarms</h2>` + table([
      ["name", (a) => esc(a.name)], ["severity", (a) => st(a.severity)], ["status", (a) => st(a.status)],
      ["summary", (a) => esc(a.summary)], ["since", (a) => esc(a.starts_at)], ["labels", (a) => json(a.labels)],
    ], alarms || []),
  },
  incidents: {
    reads: ["/v1/incidents"],
    render: ([incidents]) => `<h2>Incidents</h2>` + (incidents && incidents.length ? table([
      ["id", (i) => `<span class="incident" data-incident="${esc(i.id)}" data-state="${esc(i.state)}">${esc(i.id)}</span>`],
      ["state", (i) => `<span class="${i.state === "open" ? "bad" : "good"}">${esc(i.state)}</span>`],
      ["kind", (i) => esc(i.kind)],
      ["node", (i) => esc(i.node_name || i.node_id)],
      ["summary", (i) => esc(i.summary)],
      ["VMs recovered", (i) => esc(`${(i.vms || []).filter((v) => v.recovered_at).length}/${(i.vms || []).length}`)],
      ["detected", (i) => esc(i.detected_at)],
      ["time to detect", (i) => esc(dur(i.time_to_detect))],
      ["time to recover", (i) => (i.state === "resolved" ? esc(dur(i.time_to_recover)) : "—")],
    ], incidents) + incidents.map(incidentDetail).join("") : "<p>No incidents.</p>"),
  },
  events: {
    reads: ["/v1/events?limit=200"],
    render: ([events]) => `<h2>Events (live)</h2>` + table([
      ["seq", (e) => esc(e.seq)], ["time", (e) => esc(e.time)], ["kind", (e) => esc(e.kind)],
      ["node", (e) => esc(e.node_id)], ["VM", (e) => esc(e.vm_id)], ["message", (e) => esc(e.message)],
    ], (events || []).slice().reverse()),
  },
};

async function load(name, gen) {
  const p = pages[name];
  let index = 0;
  for (let i = 0; gen === generation; i++) {
    try {
      const first = p.reads[0];
      const sep = first.includes("?") ? "&" : "?";
      // The first read blocks until the state moves past what is shown.
      const head = await api("GET", index ? `${first}${sep}index=${index}&wait=30s` : first);
      const rest = await Promise.all(p.reads.slice(1).map((u) => api("GET", u).then((r) => r.data).catch(() => null)));
      if (gen !== generation) return;
      $("#page").innerHTML = p.render([head.data, ...rest]);
      $("#page").dataset.index = head.index;
      $("#page").dataset.loaded = name;
      showError(null);
      // An endpoint without an index (no blocking query) is re-read every 3 s.
      if (!head.index) await new Promise((r) => setTimeout(r, 3000));
      index = head.index || index;
    } catch (e) {
      if (gen !== generation) return;
      showError(e);
      await new Promise((r) => setTimeout(r, 3000));
    }
  }
}

function route() {
  const name = pages[location.hash.slice(1)] ? location.hash.slice(1) : "cluster";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  generation++;
  $("#page").innerHTML = "<p>loading…</p>";
  $("#page").dataset.page = name;
  delete $("#page").dataset.loaded;
  load(name, generation);
}

// Actions: every one asks for confirmation first.
async function act(action, arg) {
  const [kind, op] = action.split("-");
  const ref = encodeURIComponent(arg);
  if (kind === "vm") {
    let body;
    let extra = "";
    if (op === "migrate") extra = `<label>Target node (empty: the scheduler picks) <input id="migrate-to" name="to"></label>`;
    if (!(await confirmDialog(`${op} VM ${arg}?`, `<p>${esc(op)} VM <b>${esc(arg)}</b>.</p>${extra}`))) return;
    if (op === "migrate") { const to = $("#migrate-to").value.trim(); body = to ? { to } : {}; }
    if (op === "delete") return api("DELETE", `/v1/vms/${ref}`);
    return api("POST", `/v1/vms/${ref}/${op}`, body);
  }
  if (op === "rebuild") {
    const n = (await api("GET", `/v1/nodes/${ref}`)).data;
    const evidence = `<div class="evidence"><p>Rebuild moves node <b>${esc(n.name)}</b>'s VMs elsewhere and starts them there.
      It is safe only when the node cannot run them any more: it is fenced (powered off by a fence agent) or you know it is off.</p>
      <p>Evidence: monitor state ${st(n.monitor_state)}, fenced: <b>${n.fenced ? "yes" : "no"}</b>, faults: ${esc((n.faults || []).join(", ") || "none")}.</p></div>
      <label><input type="checkbox" id="confirm-fenced"> confirm-fenced: I confirm the node is fenced or powered off</label>`;
    if (!(await confirmDialog(`rebuild node ${arg}?`, evidence))) return;
    return api("POST", `/v1/nodes/${ref}/rebuild`, { confirm_fenced: $("#confirm-fenced").checked });
  }
  if (!(await confirmDialog(`${op} node ${arg}?`, `<p>${esc(op)} node <b>${esc(arg)}</b>.</p>`))) return;
  return api("POST", `/v1/nodes/${ref}/${op}`);
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  act(b.dataset.action, b.dataset.arg).then(() => showError(null), showError);
});
$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("chime-token", $("#token").value.trim());
  $("#token").value = "";
  route();
});
window.addEventListener("hashchange", route);
route();
