// The status page's script: follows /v1/events?topologies=true, one stream of
// Server-Sent Events for the members and topology health; it polls nothing.
//
// The stream is read with fetch rather than EventSource so that a bearer token
// (http_token) can be sent; the SSE framing is parsed here, and a broken stream is
// resumed with Last-Event-ID, as EventSource would.
"use strict";

const MAX_EVENTS = 50;
const RETRY_MS = 1000;

// name -> {node, state: "up" | "down", since: Date, reason}
const nodes = new Map();
const events = [];
let token = sessionStorage.getItem("rallypoint-token");

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  tbody.appendChild(tr);
  return tr;
}

function emptyRow(tbody, columns, text) {
  const td = cell(text, "empty");
  td.colSpan = columns;
  row(tbody, [td]);
}

function duration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function renderMembers() {
  const tbody = document.querySelector("#members tbody");
  tbody.replaceChildren();
  const sorted = [...nodes.values()].sort((a, b) => a.node.name.localeCompare(b.node.name));
  if (sorted.length === 0) emptyRow(tbody, 5, "no peers yet");
  const now = Date.now();
  for (const n of sorted) {
    const state = n.state === "up" ? "up" : "down (" + n.reason + ")";
    const tr = row(tbody, [
      cell(n.node.name, "mono"),
      cell(state, n.state),
      cell(duration(now - n.since.getTime())),
      cell(n.node.addr, "mono"),
      cell(n.node.incarnation, "mono"),
    ]);
    tr.dataset.node = n.node.name;
    tr.dataset.state = n.state;
  }
}

function renderEvents() {
  const tbody = document.querySelector("#events tbody");
  tbody.replaceChildren();
  if (events.length === 0) emptyRow(tbody, 4, "no events yet");
  for (const e of events) {
    const tr = row(tbody, [
      cell(e.time.toLocaleTimeString()),
      cell(e.kind, e.kind === "nodeup" ? "up" : e.kind === "nodedown" ? "down" : ""),
      cell(e.node, "mono"),
      cell(e.reason),
    ]);
    tr.dataset.kind = e.kind;
  }
}

function addEvent(kind, node, reason) {
  events.unshift({ time: new Date(), kind, node, reason: reason || "" });
  events.length = Math.min(events.length, MAX_EVENTS);
  renderEvents();
}

function onSnapshot(body) {
  document.getElementById("self").textContent =
    body.self.name + "  " + body.self.addr + "  incarnation " + body.self.incarnation;
  const present = new Set();
  for (const m of body.members) {
    present.add(m.name);
    const since = m.up_since ? new Date(m.up_since) : new Date();
    nodes.set(m.name, { node: m, state: "up", since, reason: "" });
  }
  // A peer that was up here but is not in a fresh snapshot went down meanwhile.
  for (const [name, n] of nodes) {
    if (!present.has(name) && n.state === "up") {
      nodes.set(name, { node: n.node, state: "down", since: new Date(), reason: "missed" });
    }
  }
  addEvent("snapshot", body.members.length + " members", "");
  renderMembers();
}

function onNodeUp(body) {
  const since = body.node.up_since ? new Date(body.node.up_since) : new Date();
  nodes.set(body.node.name, { node: body.node, state: "up", since, reason: "" });
  addEvent("nodeup", body.node.name, "");
  renderMembers();
}

function onNodeDown(body) {
  nodes.set(body.node.name, { node: body.node, state: "down", since: new Date(), reason: body.reason });
  addEvent("nodedown", body.node.name, body.reason);
  renderMembers();
}

// One SSE block: its event name, its id (or null) and its JSON data (or null).
function parseBlock(block) {
  let kind = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  let body = null;
  if (data.length > 0) {
    try {
      body = JSON.parse(data.join("\n"));
    } catch (_) {
      body = null;
    }
  }
  return { kind, id, body };
}

function onEvent(kind, body) {
  if (kind === "snapshot") onSnapshot(body);
  else if (kind === "nodeup") onNodeUp(body);
  else if (kind === "nodedown") onNodeDown(body);
  else if (kind === "topologies") renderTopologies(body);
}

function setConn(live, text) {
  const el = document.getElementById("conn");
  el.className = live ? "live" : "lost";
  el.textContent = text;
}

function askToken() {
  setConn(false, "token needed");
  document.getElementById("auth").style.display = "block";
}

// Follows the SSE stream at `path` until a 401: each event with data goes to
// onEvent(kind, body); onState(live) hears when the stream opens and when it breaks.
// The last id seen is sent back as Last-Event-ID when it reopens.
async function follow(path, onEvent, onState) {
  let lastId = null;
  for (;;) {
    try {
      const h = headers();
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const resp = await fetch(path, { headers: h, cache: "no-store" });
      if (resp.status === 401) {
        askToken();
        return;
      }
      if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
      onState(true);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const e = parseBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
          if (e.id !== null) lastId = e.id;
          if (e.body !== null) onEvent(e.kind, e.body);
        }
      }
    } catch (_) {
      // fall through to the retry
    }
    onState(false);
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
}

function renderTopologies(body) {
  const tbody = document.querySelector("#topologies tbody");
  tbody.replaceChildren();
  if (body.topologies.length === 0) emptyRow(tbody, 6, "no topologies");
  for (const t of body.topologies) {
    const peers = t.peers.map((p) => (p.name ? p.name + " " : "") + p.addr).join(", ");
    const tr = row(tbody, [
      cell(t.name, "mono"),
      cell(t.strategy),
      cell(t.reported ? peers || "none" : "not reported yet", "mono"),
      cell(t.last_success ? new Date(t.last_success).toLocaleString() : "never"),
      cell(t.last_error || "", t.last_error ? "down" : ""),
      cell(String(t.errors_total)),
    ]);
    tr.dataset.topology = t.name;
    tr.dataset.lastSuccess = t.last_success || "";
  }
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("rallypoint-token", token);
  document.getElementById("auth").style.display = "none";
  start();
});

function start() {
  follow("v1/events?topologies=true", onEvent, (live) =>
    setConn(live, live ? "live" : "reconnecting"));
}

renderMembers();
renderEvents();
setInterval(renderMembers, 1000);
start();
