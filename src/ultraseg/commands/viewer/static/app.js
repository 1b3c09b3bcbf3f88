"use strict";
// The ultraseg viewer: pick a source, send its frames to the server, draw each answer over its own frame.
// Numbers are shown in elements with stable ids; each also carries the raw number in data-value for tests.

const LIVE_SIDE = 256;      // longest side of live frames sent to the server: the network's input is far smaller
const DISPLAY_SIDE = 960;   // longest side of the camera frame kept for display
const FPS_WINDOW = 30;      // frames the measured rate is averaged over

const $ = (id) => document.getElementById(id);
const state = { health: null, file: null, frame: null, result: null, mask: null,
                busy: false, again: false, live: null, results: 0 };

const threshold = () => Number($("threshold").value);
const source = () => document.querySelector("input[name=source]:checked").value;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setNumber(id, value, text) {
  $(id).dataset.value = value === null || value === undefined ? "" : String(value);
  $(id).textContent = text;
}

// ---------------------------------------------------------------------------------------------- drawing

async function show(frame, r, latencyMs) {
  if (r.error) { setStatus(r.error, true); return false; }
  const mask = new Image();
  mask.src = r.mask;
  await mask.decode();
  Object.assign(state, { frame, result: r, mask });
  render();
  report(r, latencyMs);
  return true;
}

function render() {
  const { frame, result, mask } = state;
  if (!frame) return;
  const canvas = $("view"), ctx = canvas.getContext("2d");
  const w = frame.naturalWidth || frame.width, h = frame.naturalHeight || frame.height;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.globalAlpha = 1;
  ctx.drawImage(frame, 0, 0, w, h);
  $("hint").hidden = true;
  if (!result || !result.lesion_present || !$("overlay").checked) return;
  ctx.globalAlpha = Number($("opacity").value);
  ctx.drawImage(mask, 0, 0, w, h);   // the mask may be smaller than the frame: stretch it over the frame
  ctx.globalAlpha = 1;
  drawContour(ctx, result.contour, w / result.width, h / result.height);
}

function drawContour(ctx, points, sx, sy) {
  if (points.length < 2) return;
  ctx.beginPath();
  points.forEach(([x, y], i) => {
    const px = (x + 0.5) * sx, py = (y + 0.5) * sy;   // through pixel centres
    if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py);
  });
  ctx.closePath();
  ctx.lineWidth = Math.max(1.5, ctx.canvas.width / 300);
  ctx.strokeStyle = "#ffd400";
  ctx.stroke();
}

function report(r, latencyMs) {
  state.results += 1;
  const known = r.in_distribution !== false;   // a frame the model was not trained on gets no lesion answer
  $("ood").hidden = known;
  $("ood").textContent = known ? "" : `Not a breast scan: ${r.ood_reason}`;
  $("lesion").textContent = !known ? "–" : r.lesion_present ? "yes" : "no";
  $("lesion").dataset.value = String(r.lesion_present);
  $("lesion").classList.toggle("yes", r.lesion_present);
  setNumber("score", r.score, r.score.toFixed(3));
  setNumber("area-px", r.area_px, String(r.area_px));
  setNumber("area-mm2", r.area_mm2, r.area_mm2 === null ? "–" : r.area_mm2.toFixed(1));
  setNumber("latency-ms", latencyMs, latencyMs.toFixed(1));
  const serverMs = Object.values(r.timings).reduce((a, b) => a + b, 0);
  setNumber("server-ms", serverMs, serverMs.toFixed(1));
  setNumber("results", state.results, String(state.results));
}

function tick(live) {
  live.times.push(performance.now());
  if (live.times.length > FPS_WINDOW + 1) live.times.shift();
  const n = live.times.length;
  if (n < 2) return;
  const fps = (n - 1) * 1000 / (live.times[n - 1] - live.times[0]);
  setNumber("fps", fps, fps.toFixed(1));
}

// ---------------------------------------------------------------------------------------------- still images

function mimeOf(file) {
  if (file.type.startsWith("image/")) return file.type;
  // Browsers know no type for DICOM files (often named without a suffix): let the server try them as DICOM
  if (!file.type || /\.(dcm|dicom)$/i.test(file.name)) return "application/dicom";
  return file.type;
}

async function segmentStill() {
  if (!state.file) return;
  if (state.busy) { state.again = true; return; }   // one request at a time; the latest threshold wins
  state.busy = true;
  try {
    do {
      state.again = false;
      await segmentOnce(state.file);
    } while (state.again);
  } finally {
    state.busy = false;
  }
}

async function segmentOnce(file) {
  const t0 = performance.now();
  let r;
  try {
    const response = await fetch(`/segment?frame=1&threshold=${threshold()}`,
                                 { method: "POST", body: file, headers: { "Content-Type": mimeOf(file) } });
    r = await response.json();
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    return;
  }
  if (r.error) { setStatus(`${file.name}: ${r.error}`, true); return; }
  const frame = new Image();
  frame.src = r.frame;
  await frame.decode();
  if (await show(frame, r, performance.now() - t0)) {
    setStatus(`${file.name}: ${r.width}×${r.height}` + (r.frames > 1 ? `, frame 1 of ${r.frames}` : ""));
  }
  setNumber("fps", null, "–");
}

function useFile(file) {
  if (!file) return;
  stopLive();
  document.querySelector("input[name=source][value=file]").checked = true;
  updateButtons();
  state.file = file;
  segmentStill();
}

// ---------------------------------------------------------------------------------------------- live streams

function openLive(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`);
    const live = { ws, path, stopped: false, times: [], waiting: null, stream: null };
    const answer = (r) => { const w = live.waiting; live.waiting = null; if (w) w(r); };
    ws.onopen = () => resolve(live);
    ws.onerror = () => reject(new Error(`cannot connect to ${path}`));
    ws.onmessage = (event) => answer(JSON.parse(event.data));
    ws.onclose = () => answer({ error: "connection closed" });
  });
}

function reply(live) {
  return new Promise((resolve) => { live.waiting = resolve; });
}

async function startCamera(live) {
  live.stream = await navigator.mediaDevices.getUserMedia(
    { video: { width: { ideal: 640 }, frameRate: { ideal: 60 } }, audio: false });
  const video = $("video");
  video.srcObject = live.stream;
  await video.play();
  live.ws.send(JSON.stringify({ threshold: threshold() }));
  cameraLoop(live, video);
}

// One frame in flight: while the server segments frame n, the page already grabs and encodes frame n + 1,
// and sends it the moment the answer for n arrives; each answer is drawn over the frame it belongs to.
async function cameraLoop(live, video) {
  let next = grab(video);
  while (!live.stopped) {
    const frame = await next;
    const t0 = performance.now();
    const answer = reply(live);
    live.ws.send(frame.blob);
    next = grab(video);
    const r = await answer;
    if (live.stopped) break;
    if (!(await show(frame.canvas, r, performance.now() - t0))) { stopLive(r.error); break; }
    tick(live);
  }
}

async function grab(video) {
  await newVideoFrame(video);
  const big = scaled(video, video.videoWidth, video.videoHeight, DISPLAY_SIDE);
  const small = scaled(big, big.width, big.height, LIVE_SIDE);   // from big, so both show the same instant
  const blob = await new Promise((resolve) => small.toBlob(resolve, "image/jpeg", 0.85));
  return { canvas: big, blob };
}

function scaled(image, w, h, side) {
  const k = Math.min(1, side / Math.max(w, h));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(w * k));
  canvas.height = Math.max(1, Math.round(h * k));
  canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function newVideoFrame(video) {
  // Wait for a frame the camera has not shown yet, so no frame is segmented twice; a stalled camera times out.
  if (!video.requestVideoFrameCallback) return new Promise((resolve) => requestAnimationFrame(resolve));
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 200);
    video.requestVideoFrameCallback(() => { clearTimeout(timer); resolve(); });
  });
}

// The server paces its source; the page asks for each next frame (carrying the threshold) once it drew the last.
async function serverLoop(live) {
  while (!live.stopped) {
    const t0 = performance.now();
    const answer = reply(live);
    live.ws.send(JSON.stringify({ threshold: threshold() }));
    const r = await answer;
    if (live.stopped) break;
    if (r.error) { stopLive(r.error); break; }
    const frame = new Image();
    frame.src = r.frame;
    await frame.decode();
    await show(frame, r, performance.now() - t0);
    tick(live);
  }
}

async function start() {
  stopLive();
  const kind = source();
  $("start").disabled = true;
  try {
    state.live = await openLive(kind === "camera" ? "/ws" : "/source");
    if (kind === "camera") await startCamera(state.live); else serverLoop(state.live);
    $("stop").disabled = false;
    setStatus(kind === "camera" ? "streaming the camera" : `streaming ${state.health.source}`);
  } catch (err) {
    stopLive(`cannot start the ${kind}: ${err.message || err}`);
  }
}

function stopLive(message) {
  const live = state.live;
  state.live = null;
  if (live) {
    live.stopped = true;
    live.ws.close();
    if (live.stream) live.stream.getTracks().forEach((track) => track.stop());
  }
  updateButtons();
  if (message) setStatus(message, true);
}

function updateButtons() {
  $("start").disabled = source() === "file" || state.live !== null;
  $("stop").disabled = state.live === null;
}

// ---------------------------------------------------------------------------------------------- controls

function onThreshold() {
  $("threshold-value").textContent = threshold().toFixed(2);
  const live = state.live;
  if (live && live.path === "/ws" && live.ws.readyState === WebSocket.OPEN) {
    live.ws.send(JSON.stringify({ threshold: threshold() }));   // applies to the next frames
  } else if (!live) {
    segmentStill();   // re-segment the still image on screen
  }
}

function wire() {
  $("threshold").addEventListener("input", onThreshold);
  $("overlay").addEventListener("change", render);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
    render();
  });
  $("file").addEventListener("change", () => useFile($("file").files[0]));
  document.querySelectorAll("input[name=source]").forEach((radio) => radio.addEventListener("change", () => {
    stopLive();
    if (source() === "file") $("file").click();
  }));
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => { stopLive(); setStatus("stopped"); });
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("drag"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("drag"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("drag");
    useFile(event.dataTransfer.files[0]);
  });
}

async function init() {
  wire();
  try {
    state.health = await (await fetch("/health")).json();
  } catch (err) {
    setStatus(`cannot reach the server: ${err}`, true);
    return;
  }
  const h = state.health;
  $("threshold").value = h.threshold;
  $("threshold-value").textContent = threshold().toFixed(2);
  $("model").textContent = `${h.model.split("/").pop()} · ${h.input_size}px input · threshold ${h.threshold}`;
  if (h.source) {
    document.querySelector("input[name=source][value=server]").disabled = false;
    $("server-source").textContent = `Server: ${h.source}`;
  }
  updateButtons();
  document.body.dataset.ready = "1";
}

init();
