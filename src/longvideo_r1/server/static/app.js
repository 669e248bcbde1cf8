// The page of `lvr1 serve`: a video's caption tree as a timeline, lit as the agent visits it.
// Live runs (server-sent events) and replays of stored traces are the same events, drawn by
// one function, `show`. No build step, no library.
"use strict";

const $ = (sel) => document.querySelector(sel);
const token = new URLSearchParams(location.search).get("token");
const state = { video: null, tree: null, captions: {}, order: 0, source: null, timers: [] };

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = Object.assign({}, options, { body: JSON.stringify(options.json) });
  }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const payload = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}

const idText = (id) => id.join(".");
const label = (id) => "(" + id.join(", ") + (id.length === 1 ? ",)" : ")");
function clock(seconds) {
  const m = Math.floor(seconds / 60), s = seconds - 60 * m;
  return m + ":" + s.toFixed(1).padStart(4, "0");
}
const spanText = (node) => node && node.start != null ? clock(node.start) + "–" + clock(node.end) : "";

function setStatus(text, error = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", error);
}

// videos and the timeline --------------------------------------------------------------

async function loadVideos() {
  const [info, listing] = await Promise.all([api("/api/info"), api("/api/videos")]);
  $("#info").textContent = `navigator: ${info.reasoning} · captioner: ${info.captioner} · ` +
    `up to ${info.max_rounds} rounds`;
  const select = $("#video");
  select.innerHTML = "";
  for (const video of listing.videos) {
    const option = document.createElement("option");
    option.value = video.id;
    option.textContent = video.name;
    select.append(option);
  }
  if (!listing.videos.length) return setStatus("no videos under the data folder");
  for (const id of await firstChoices(listing.videos)) {
    try {
      select.value = id;
      return await loadVideo(id);
    } catch (err) {
      setStatus(err.message, true);
    }
  }
}

// The video to open first: the address's, the last one asked about, those lvr1 has opened
// before, then the rest in name order (a file that does not decode is passed over).
async function firstChoices(videos) {
  const ids = videos.map((v) => v.id);
  const order = [];
  const wanted = new URLSearchParams(location.hash.slice(1)).get("video");
  if (ids.includes(wanted)) order.push(wanted);
  const { traces } = await api("/api/traces");
  const last = traces.length && ids.find((id) => (traces[0].fingerprint || "").startsWith(id));
  if (last) order.push(last);
  order.push(...videos.filter((v) => v.known).map((v) => v.id), ...ids);
  return [...new Set(order)];
}

async function loadVideo(id) {
  setStatus("opening the video…");
  stopRun();
  const tree = await api(`/api/videos/${id}`);
  state.video = id;
  state.tree = tree;
  state.captions = {};
  for (const node of tree.nodes) if (node.caption) state.captions[idText(node.id)] = node.caption;
  $("#player").src = withToken(`/api/videos/${id}/file`);
  drawTimeline(tree);
  clearRun();
  setStatus(`${tree.video}: ${clock(tree.duration)}, width ${tree.width}, ${tree.nodes.length} nodes`);
  await loadTraces();
}

function placed(el, start, end) {
  const d = state.tree.duration;
  el.style.left = (100 * start / d) + "%";
  el.style.width = (100 * (end - start) / d) + "%";
  return el;
}

function drawTimeline(tree) {
  for (const lane of document.querySelectorAll("#timeline .lane")) lane.innerHTML = "";
  for (const node of tree.nodes) {
    const el = placed(document.createElement("div"), node.start, node.end);
    el.className = "node" + (node.caption ? " captioned" : "");
    el.dataset.id = idText(node.id);
    el.addEventListener("click", () => seek(node.start));
    el.addEventListener("mouseenter", (e) => showTooltip(node, e));
    el.addEventListener("mousemove", moveTooltip);
    el.addEventListener("mouseleave", () => { $("#tooltip").hidden = true; });
    document.querySelector(`.row[data-depth="${node.id.length}"] .lane`).append(el);
  }
}

function nodeEl(id) {
  return document.querySelector(`.node[data-id="${idText(id)}"]`);
}

function seek(seconds) {
  const player = $("#player");
  player.currentTime = seconds;
  player.play().catch(() => {});
}

function showTooltip(node, event) {
  const tip = $("#tooltip");
  tip.querySelector("img").src = withToken(`/api/videos/${state.video}/thumbs/${idText(node.id)}`);
  tip.querySelector(".span").textContent = `${label(node.id)} ${node.level} ${spanText(node)}`;
  tip.querySelector(".caption").textContent = state.captions[idText(node.id)] || "(no caption yet)";
  tip.hidden = false;
  moveTooltip(event);
}

function moveTooltip(event) {
  const tip = $("#tooltip");
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = x + "px";
  tip.style.top = (event.clientY + 16) + "px";
}

$("#player").addEventListener("timeupdate", () => {
  if (!state.tree) return;
  const frac = Math.min(1, $("#player").currentTime / state.tree.duration);
  const lane = document.querySelector("#timeline .lane");
  $("#playhead").style.left = (lane.offsetLeft + frac * lane.offsetWidth) + "px";
  $("#playhead").style.display = "block";
});

// a run: live or replayed -------------------------------------------------------------

function clearRun() {
  state.order = 0;
  for (const el of document.querySelectorAll(".node")) {
    el.classList.remove("visited", "current", "opening", "evidence");
    delete el.dataset.order;
  }
  $("#evidence-row .lane").innerHTML = "";
  $("#rounds").innerHTML = "";
  $("#answer").hidden = true;
  showCost({ rounds: 0, made: 0, cached: 0, qa: 0, seconds: 0 });
}

function showCost(cost) {
  for (const [key, value] of Object.entries(cost)) {
    const el = document.querySelector(`[data-cost="${key}"]`);
    if (el) el.textContent = key === "seconds" ? Number(value).toFixed(1) : value;
  }
}

function runningCost(c) {
  return { rounds: c.rounds, made: c.captions_made, cached: c.captions_cached,
           qa: c.video_qa_calls, seconds: c.seconds };
}

function visit(node) {
  const el = nodeEl(node.id);
  if (!el) return;
  for (const other of document.querySelectorAll(".node.current")) other.classList.remove("current");
  state.order += 1;
  el.dataset.order = state.order;
  el.classList.add("visited", "current");
}

function show(event) {
  if (event.kind === "status") setStatus(event.text);
  else if (event.kind === "opening") showOpening(event);
  else if (event.kind === "round") showRound(event);
  else if (event.kind === "answer") showAnswer(event);
  else if (event.kind === "error") setStatus(event.message, true);
}

function showOpening(event) {
  for (const node of event.nodes) {
    if (node.caption) state.captions[idText(node.id)] = node.caption;
    const el = nodeEl(node.id);
    if (el) el.classList.add("opening", "captioned");
  }
  showCost(runningCost(event.cost));
  setStatus("read the high-level captions; the navigator is thinking…");
}

function showRound(event) {
  const li = document.createElement("li");
  const call = document.createElement("div");
  call.className = "call";
  if (event.node) {
    visit(event.node);
    const query = event.query ? ` "${event.query}"` : "";
    call.textContent = `${event.action}${label(event.node.id)}${query}  ${spanText(event.node)}`;
    if (event.action === "get_caption" && event.observation && !event.error) {
      state.captions[idText(event.node.id)] = event.observation;
      const el = nodeEl(event.node.id);
      if (el) el.classList.add("captioned");
    }
  } else if (event.action === "answer") {
    call.textContent = `answer ${JSON.stringify(event.answer)}`;
  } else {
    call.textContent = event.action || "no reply";
  }
  if (event.think) li.append(Object.assign(document.createElement("div"),
    { className: "think", textContent: event.think }));
  li.append(call);
  if (event.error) li.append(Object.assign(document.createElement("div"),
    { className: "err", textContent: event.error }));
  if (event.observation && event.action !== "answer") li.append(Object.assign(
    document.createElement("div"), { className: "observation", textContent: event.observation }));
  li.dataset.index = event.index;
  $("#rounds").append(li);
  li.scrollIntoView({ block: "nearest" });
  showCost(runningCost(event.cost));
  setStatus(`round ${event.index} done; the navigator is thinking…`);
}

function showAnswer(event) {
  for (const other of document.querySelectorAll(".node.current")) other.classList.remove("current");
  const box = $("#answer");
  box.className = event.status;
  box.innerHTML = "";
  const value = event.status === "answered" ? event.answer : event.status.replace("_", " ");
  box.append(Object.assign(document.createElement("div"), { className: "value", textContent: value }));
  if (event.reason) box.append(Object.assign(document.createElement("div"), { textContent: event.reason }));
  const lane = $("#evidence-row .lane");
  lane.innerHTML = "";
  if (event.evidence.length) box.append(document.createTextNode("evidence: "));
  for (const item of event.evidence) {
    const link = Object.assign(document.createElement("a"),
      { textContent: `${label(item.node_id)} ${clock(item.start)}–${clock(item.end)}` });
    link.addEventListener("click", () => seek(item.start));
    box.append(link);
    const span = placed(document.createElement("div"), item.start, item.end);
    span.className = "evidence-span";
    span.title = `${item.how} ${label(item.node_id)}`;
    span.addEventListener("click", () => seek(item.start));
    lane.append(span);
    const el = nodeEl(item.node_id);
    if (el) el.classList.add("evidence");
  }
  box.hidden = false;
  const c = event.cost;
  showCost({ rounds: c.rounds, made: c.captions_made, cached: c.captions_cached,
             qa: c.video_qa_calls + (c.video_qa_from_captions || 0), seconds: c.end_to_end_seconds });
  setStatus(event.trace ? "done; the trace is kept" : "done");
}

function stopRun() {
  if (state.source) state.source.close();
  state.source = null;
  for (const id of state.timers) clearTimeout(id);
  state.timers = [];
  $("#ask-button").disabled = false;
}

async function ask(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  const choices = $("#choices").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!state.video || !question) return;
  stopRun();
  clearRun();
  $("#ask-button").disabled = true;
  try {
    const run = await api(`/api/videos/${state.video}/ask`,
      { method: "POST", json: { question, choices: choices.length ? choices : null } });
    const source = new EventSource(withToken(run.events));
    state.source = source;
    source.onmessage = (message) => {
      const data = JSON.parse(message.data);
      show(data);
      if (data.kind === "answer" || data.kind === "error") {
        stopRun();
        loadTraces();
      }
    };
    source.onerror = () => { if (state.source === source) { stopRun(); setStatus("the connection to the server was lost", true); } };
  } catch (err) {
    stopRun();
    setStatus(err.message, true);
  }
}

// earlier questions and replays ---------------------------------------------------------

async function loadTraces() {
  if (!state.video) return;
  const listing = await api(`/api/traces?video=${state.video}`);
  const list = $("#traces");
  list.innerHTML = "";
  for (const trace of listing.traces) {
    const li = document.createElement("li");
    li.dataset.trace = trace.id;
    li.title = trace.source;
    li.append(Object.assign(document.createElement("span"), { className: "q", textContent: trace.question }));
    const outcome = trace.status === "answered" ? trace.answer : trace.status;
    li.append(Object.assign(document.createElement("span"), { className: "meta",
      textContent: `${outcome} · ${trace.rounds} round${trace.rounds === 1 ? "" : "s"} · ` +
        `${trace.seconds.toFixed(1)} s` }));
    const button = Object.assign(document.createElement("button"), { className: "replay", textContent: "replay" });
    button.addEventListener("click", () => replay(trace));
    li.append(button);
    list.append(li);
  }
}

async function replay(trace) {
  stopRun();
  clearRun();
  $("#question").value = trace.question;
  $("#choices").value = (trace.choices || []).join("\n");
  const { events } = await api(`/api/traces/${trace.id}/events`);
  const speed = Number($("#speed").value);
  setStatus(`replaying${speed ? " at " + speed + "×" : ""}…`);
  for (const event of events) {
    const delay = speed ? (1000 * event.at) / speed : 0;
    state.timers.push(setTimeout(() => show(event), delay));
  }
}

$("#ask").addEventListener("submit", ask);
$("#video").addEventListener("change", (e) => {
  location.hash = "video=" + e.target.value;
  loadVideo(e.target.value).catch((err) => setStatus(err.message, true));
});
loadVideos().catch((err) => setStatus(err.message, true));
