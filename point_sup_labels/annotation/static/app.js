// point_sup P_N annotation page. Plain JavaScript, no build step, no external resources.
//
// The server decides what to ask (GET /api/state); this page only draws it, times the answer and
// posts it. Every answer names the object and point it answers, and every answer, flag and undo
// carries the state's version it was made against, so a stale page (second tab, reload race, key
// repeat, a replayed request) is refused by the server (409) instead of recording a wrong answer
// or taking back one more than the annotator saw.
"use strict";

const crop = document.getElementById("crop");
const overview = document.getElementById("overview");
const ctx = crop.getContext("2d");
const octx = overview.getContext("2d");
const el = (id) => document.getElementById(id);

const COLORS = { object: "#35d07f", background: "#ff5ca8", box: "#ffd23f" };

let state = null;        // the last state from the server
let busy = false;        // a request is in flight: further keys are ignored, not queued
let shownAt = null;      // performance.now() when the current point became visible
let hiddenAt = null;     // the tab was hidden at this time (that time is not counted)
let wide = false;        // zoomed out to show more surroundings
const images = new Map(); // image id -> Promise<HTMLImageElement>

function loadImage(id) {
  if (!images.has(id)) {
    images.set(id, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => { images.delete(id); reject(new Error(`image ${id} could not be loaded`)); };
      img.src = `/images/${id}`;
    }));
  }
  return images.get(id);
}

async function request(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json();
  return { status: response.status, data };
}

function setMessage(text) { el("message").textContent = text || ""; }

function formatDuration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function showProgress(p) {
  const flagged = p.objects_flagged ? ` (${p.objects_flagged} flagged)` : "";
  const rate = p.seconds_per_point_measured
    ? `${p.seconds_per_point.toFixed(2)} s/point`
    : `${p.seconds_per_point} s/point (paper's estimate until you have answered a few)`;
  el("progress").innerHTML =
    `objects <b>${p.objects_done}</b>/${p.objects_total}${flagged} · ` +
    `points <b>${p.points_done}</b>/${p.points_total} · ` +
    `images <b>${p.images_complete}</b>/${p.images_total} · ${rate} · ` +
    `about <b>${formatDuration(p.eta_seconds)}</b> left`;
}

// The crop: the box centred, with half its size of surroundings on each side (Z: much more).
function view(task) {
  const [x, y, w, h] = task.bbox;
  const factor = wide ? 5 : 2;
  const minSide = wide ? 96 : 24; // image pixels; tiny boxes still get some context
  const scale = Math.min(
    crop.width / Math.max(w * factor, minSide),
    crop.height / Math.max(h * factor, minSide),
    48,
  );
  const sx = x + w / 2 - crop.width / (2 * scale);
  const sy = y + h / 2 - crop.height / (2 * scale);
  return { scale, sx, sy };
}

function drawImageWindow(c, img, v) {
  // Only the part of the window that lies in the image is drawn (outside stays black).
  const sw = c.canvas.width / v.scale, sh = c.canvas.height / v.scale;
  const x0 = Math.max(0, v.sx), y0 = Math.max(0, v.sy);
  const x1 = Math.min(img.naturalWidth, v.sx + sw), y1 = Math.min(img.naturalHeight, v.sy + sh);
  c.fillStyle = "#000";
  c.fillRect(0, 0, c.canvas.width, c.canvas.height);
  if (x1 <= x0 || y1 <= y0) return;
  // Magnified pixels stay crisp squares: the annotator judges one pixel, not a blur.
  c.imageSmoothingEnabled = v.scale < 3;
  c.drawImage(img, x0, y0, x1 - x0, y1 - y0,
    (x0 - v.sx) * v.scale, (y0 - v.sy) * v.scale, (x1 - x0) * v.scale, (y1 - y0) * v.scale);
}

function toCanvas(v, px, py) { return [(px - v.sx) * v.scale, (py - v.sy) * v.scale]; }

function drawBox(c, v, task, lineWidth) {
  const [x, y, w, h] = task.bbox;
  const [cx, cy] = toCanvas(v, x, y);
  c.strokeStyle = COLORS.box;
  c.lineWidth = lineWidth;
  c.setLineDash([8, 5]);
  c.strokeRect(cx, cy, w * v.scale, h * v.scale);
  c.setLineDash([]);
}

function dot(c, x, y, r, color) {
  c.beginPath();
  c.arc(x, y, r, 0, 2 * Math.PI);
  c.fillStyle = color;
  c.fill();
  c.lineWidth = 1.5;
  c.strokeStyle = "#000";
  c.stroke();
}

// A cross whose arms stop short of the pixel, so the marker never hides what is being judged.
function crosshair(c, x, y, gap) {
  const arm = 16;
  const segments = [[1, 0], [-1, 0], [0, 1], [0, -1]];
  for (const [width, color] of [[5, "#000"], [2, "#fff"]]) {
    c.lineWidth = width;
    c.strokeStyle = color;
    c.beginPath();
    for (const [dx, dy] of segments) {
      c.moveTo(x + dx * gap, y + dy * gap);
      c.lineTo(x + dx * (gap + arm), y + dy * (gap + arm));
    }
    c.stroke();
  }
  c.beginPath();
  c.arc(x, y, gap + arm + 4, 0, 2 * Math.PI);
  c.lineWidth = 1;
  c.strokeStyle = "rgba(255,255,255,0.6)";
  c.stroke();
}

function draw(img, task) {
  const v = view(task);
  drawImageWindow(ctx, img, v);
  drawBox(ctx, v, task, 2);
  for (const a of task.answered) {
    const [x, y] = toCanvas(v, a.point[0] + 0.5, a.point[1] + 0.5);
    dot(ctx, x, y, 4, a.label ? COLORS.object : COLORS.background);
  }
  const [px, py] = toCanvas(v, task.point[0] + 0.5, task.point[1] + 0.5);
  if (v.scale >= 6) { // outline the pixel itself when it is big enough to see
    ctx.lineWidth = 1;
    ctx.strokeStyle = "rgba(255,255,255,0.8)";
    ctx.strokeRect(px - v.scale / 2, py - v.scale / 2, v.scale, v.scale);
  }
  crosshair(ctx, px, py, Math.max(v.scale / 2 + 4, 7));

  // Overview: the whole image, the box and the point.
  // The overview takes the image's aspect ratio (within limits) so that no space is wasted.
  overview.height = Math.round(Math.min(2 * overview.width,
    Math.max(overview.width / 4, overview.width * img.naturalHeight / img.naturalWidth)));
  const s = Math.min(overview.width / img.naturalWidth, overview.height / img.naturalHeight);
  const ov = { scale: s, sx: 0, sy: 0 };
  drawImageWindow(octx, img, ov);
  drawBox(octx, ov, task, 1.5);
  dot(octx, (task.point[0] + 0.5) * s, (task.point[1] + 0.5) * s, 3, "#fff");
}

async function render() {
  const p = state.progress;
  showProgress(p);
  el("btn-undo").disabled = !state.can_undo;
  if (state.finished) {
    el("done").hidden = false;
    for (const id of ["btn-object", "btn-background", "btn-flag", "btn-zoom"]) el(id).disabled = true;
    ctx.clearRect(0, 0, crop.width, crop.height);
    document.body.dataset.state = "finished";
    shownAt = null;
    return;
  }
  el("done").hidden = true;
  for (const id of ["btn-object", "btn-background", "btn-flag", "btn-zoom"]) el(id).disabled = false;
  const task = state.task;
  el("category").textContent = task.category;
  el("object-id").textContent = `${task.object_number} of ${p.objects_total + p.objects_without_points} (annotation id ${task.ann_id})`;
  el("point-number").textContent = `${task.index + 1} of ${task.num_points}`;
  el("image-name").textContent = task.file_name;
  document.body.dataset.state = "loading";
  let img;
  try {
    img = await loadImage(task.image_id);
  } catch (err) {
    setMessage(`${err.message}; reload the page to try again`);
    return;
  }
  if (img.naturalWidth !== task.width || img.naturalHeight !== task.height) {
    setMessage(`warning: the image file is ${img.naturalWidth}x${img.naturalHeight}, ` +
      `the JSON says ${task.width}x${task.height}`);
  }
  draw(img, task);
  shownAt = performance.now();
  hiddenAt = document.hidden ? shownAt : null;
  document.body.dataset.ann = String(task.ann_id);
  document.body.dataset.index = String(task.index);
  document.body.dataset.state = "ready";
  if (state.next_image_id !== null && state.next_image_id !== undefined) {
    loadImage(state.next_image_id).catch(() => {}); // prefetch; errors show when it is needed
  }
}

// Posts a change; true if the server recorded it or refused it as stale (the page then shows the
// server's state), false if it was not saved (the page stays as it was, so the key can be pressed
// again).
async function act(url, body) {
  busy = true;
  try {
    const { status, data } = await request("POST", url, { ...body, version: state.version });
    if (status === 200) {
      setMessage("");
      state = data;
    } else if (status === 409) {
      setMessage("This page was out of date and has been refreshed; nothing was recorded.");
      state = data.state;
    } else {
      setMessage(`Not saved: ${data.error || status}`);
      return false;
    }
    await render();
    return true;
  } catch (err) {
    setMessage(`Not saved (is the server still running?): ${err.message}`);
    return false;
  } finally {
    busy = false;
  }
}

async function answer(label) {
  if (busy || !state || state.finished || shownAt === null || document.body.dataset.state !== "ready") return;
  const now = performance.now();
  const hidden = hiddenAt !== null ? now - hiddenAt : 0;
  // The server refuses times over state.max_seconds (a forgotten tab is not a measurement): the
  // answer is still worth recording, with its time capped.
  const seconds = Math.min(Math.max(0, (now - shownAt - hidden) / 1000), state.max_seconds ?? Infinity);
  const started = shownAt;
  shownAt = null;
  const done = await act("/api/answer", { ann_id: state.task.ann_id, index: state.task.index, label, seconds });
  if (!done && shownAt === null) shownAt = started; // not saved: a retry keeps timing from the start
}

function undo() {
  if (busy || !state || !state.can_undo) return;
  act("/api/undo", {});
}

function flag() {
  if (busy || !state || state.finished) return;
  act("/api/flag", { ann_id: state.task.ann_id, reason: "bad_box" });
}

function toggleZoom() {
  wide = !wide;
  if (state && !state.finished) {
    // Redraw without resetting the timer: looking closer is part of answering.
    loadImage(state.task.image_id).then((img) => draw(img, state.task)).catch(() => {});
  }
}

document.addEventListener("keydown", (e) => {
  if (e.altKey || e.metaKey) return;
  const key = e.key.toLowerCase();
  let handled = true;
  if (e.ctrlKey) {
    if (key === "z") undo(); else handled = false;
  } else if (e.repeat) {
    handled = ["o", "1", "b", "2", "u", "backspace", "x"].includes(key); // held keys answer once
  } else if (key === "o" || key === "1") answer(1);
  else if (key === "b" || key === "2") answer(0);
  else if (key === "u" || key === "backspace") undo();
  else if (key === "x") flag();
  else if (key === "z") toggleZoom();
  else handled = false;
  if (handled) e.preventDefault();
});

// Time spent with the tab hidden is not part of the answer's time.
document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    hiddenAt = performance.now();
  } else {
    if (hiddenAt !== null && shownAt !== null) shownAt += performance.now() - hiddenAt;
    hiddenAt = null;
  }
});

el("btn-object").addEventListener("click", () => answer(1));
el("btn-background").addEventListener("click", () => answer(0));
el("btn-undo").addEventListener("click", undo);
el("btn-flag").addEventListener("click", flag);
el("btn-zoom").addEventListener("click", toggleZoom);

(async () => {
  try {
    const { data } = await request("GET", "/api/state");
    state = data;
    await render();
  } catch (err) {
    setMessage(`Cannot reach the annotation server: ${err.message}`);
  }
})();
