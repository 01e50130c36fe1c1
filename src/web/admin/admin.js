// Rendezvous admin page: polls the admin API with the operator's token and acts on
// sessions, rooms, bans and reports. No build step, no dependencies.

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("rdv-admin-token") || "";
let timer = null;

async function api(path, body) {
  const init = { headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) throw new Error("the token was refused (401)");
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function status(text) {
  $("#status").textContent = text;
}

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value ?? "";
  row.append(td);
  return td;
}

function button(label, action, danger = false) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (danger) b.className = "danger";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await action();
      status(`${label}: done`);
      await refresh();
    } catch (e) {
      status(`${label} failed: ${e.message}`);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function actions(...buttons) {
  const span = document.createElement("span");
  span.className = "actions";
  for (const b of buttons) span.append(b, " ");
  return span;
}

const when = (ms) => new Date(ms).toLocaleString();
const banFor = (user, ip) => () =>
  api("/api/bans", {
    user_id: user,
    duration_secs: Number($("#ban-duration").value),
    ip: ip || undefined,
    reason: "banned from the admin page",
  });

function fill(table, rows, render) {
  const body = $(`${table} tbody`);
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    body.append(tr);
  }
}

function renderOverview(o) {
  $("#node").textContent = `· node ${o.node}`;
  const counts = $("#counts");
  counts.replaceChildren();
  for (const [k, v] of Object.entries({
    online: o.online, searching: o.searching, rooms: o.rooms, nodes: o.nodes,
    "open reports": o.open_reports, bans: o.bans,
  })) {
    const div = document.createElement("div");
    div.dataset.count = k;
    div.innerHTML = "<dt></dt><dd></dd>";
    div.querySelector("dt").textContent = k;
    div.querySelector("dd").textContent = v;
    counts.append(div);
  }
  fill("#pools", Object.entries(o.pools || {}), (tr, [lang, n]) => { cell(tr, lang); cell(tr, n); });
  const trending = $("#trending");
  trending.replaceChildren(...(o.trending || []).map((t) => {
    const li = document.createElement("li");
    li.textContent = `${t.interest} (${t.score})`;
    return li;
  }));
}

function evidence(report) {
  const d = document.createElement("details");
  const s = document.createElement("summary");
  s.textContent = `${report.evidence.length} messages`;
  const pre = document.createElement("pre");
  pre.textContent = report.evidence.map((m) => `${m.sender}: ${m.text}`).join("\n");
  d.append(s, pre);
  return d;
}

async function refresh() {
  try {
    const [overview, reports, sessions, rooms, bans] = await Promise.all([
      api("/api/overview"),
      api("/api/reports?status=open"),
      api(`/api/sessions?find=${encodeURIComponent($("#find-session").value)}`),
      api("/api/rooms"),
      api("/api/bans"),
    ]);
    renderOverview(overview);
    fill("#reports", reports, (tr, r) => {
      tr.dataset.report = r.id;
      tr.dataset.reported = r.reported;
      cell(tr, when(r.at_ms)); cell(tr, r.reported); cell(tr, r.reporter);
      cell(tr, r.room_id); cell(tr, r.reason); cell(tr, evidence(r));
      cell(tr, actions(
        button("Ban", async () => {
          await banFor(r.reported)();
          await api("/api/reports/resolve", { report_id: r.id, outcome: "banned" });
        }, true),
        button("Kick", () => api("/api/kick", { user_id: r.reported })),
        button("Dismiss", () => api("/api/reports/resolve", { report_id: r.id, outcome: "dismissed" })),
      ));
    });
    fill("#sessions", sessions, (tr, s) => {
      tr.dataset.user = s.user_id;
      cell(tr, s.user_id); cell(tr, s.ip); cell(tr, s.rooms.join(", "));
      cell(tr, actions(
        button("Kick", () => api("/api/kick", { user_id: s.user_id })),
        button("Ban", banFor(s.user_id), true),
        button("Ban address", banFor(s.user_id, s.ip), true),
      ));
    });
    fill("#rooms", rooms, (tr, r) => {
      tr.dataset.room = r.room_id;
      cell(tr, r.room_id); cell(tr, r.members.join(", "));
      cell(tr, actions(button("Close", () => api("/api/rooms/close", { room_id: r.room_id }), true)));
    });
    fill("#bans", bans, (tr, b) => {
      tr.dataset.ban = b.user;
      cell(tr, b.user); cell(tr, b.ip); cell(tr, when(b.until_ms)); cell(tr, b.reason);
      cell(tr, actions(button("Lift", () => api("/api/unban", { user_id: b.user }))));
    });
    $("#main").hidden = false;
    document.body.dataset.loaded = "yes";
  } catch (e) {
    status(`Cannot load: ${e.message}`);
  }
}

function start() {
  clearInterval(timer);
  refresh();
  timer = setInterval(refresh, 2000);
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("rdv-admin-token", token);
  status("Connected.");
  start();
});

if (token) start();
