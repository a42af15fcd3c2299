// The demo page: microphone → AudioWorklet → s16le frames over /v1/stream; results as bars, a scrolling
// spectrogram of the input, and for language models a continuation played back as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
let ctx = null, ws = null, media = null, analyser = null, playhead = 0, modelRate = 0;

function setStatus(text) { $("status").textContent = text; }

function streamUrl() {
  const url = new URL("/v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  return url;
}

function toS16(frame) {
  const out = new Int16Array(frame.length);
  for (let i = 0; i < frame.length; i++) {
    const v = Math.max(-1, Math.min(1, frame[i]));
    out[i] = Math.round(v * 32767);
  }
  return out.buffer;
}

function makeBars(labels) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const label of labels) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = label;
    row.innerHTML = '<span class="name"></span><span class="track"><div class="fill"></div></span><span class="p"></span>';
    row.querySelector(".name").textContent = label;
    bars.appendChild(row);
  }
}

function showResult(msg) {
  if (msg.probs) {
    const rows = $("bars").children;
    for (let i = 0; i < rows.length; i++) {
      const p = msg.probs[i];
      rows[i].querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
      rows[i].querySelector(".p").textContent = p.toFixed(2);
      rows[i].classList.toggle("top", rows[i].dataset.label === msg.top);
    }
    $("top").textContent = msg.top;
    $("top").dataset.label = msg.top;
    $("top").dataset.position = msg.position;
  } else if (msg.bits_per_sample !== undefined) {
    $("bits").textContent = msg.bits_per_sample.toFixed(2);
    $("top").dataset.position = msg.position;
  }
}

function playFrame(data) {
  const s16 = new Int16Array(data);
  const buffer = ctx.createBuffer(1, s16.length, modelRate);
  const ch = buffer.getChannelData(0);
  for (let i = 0; i < s16.length; i++) ch[i] = s16[i] / 32768;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  playhead = Math.max(playhead, ctx.currentTime + 0.05);
  source.start(playhead);
  playhead += buffer.duration;
}

function drawSpectrogram() {
  const canvas = $("spectrogram"), g = canvas.getContext("2d");
  const bins = new Uint8Array(analyser.frequencyBinCount);
  const column = g.createImageData(1, canvas.height);
  const step = () => {
    if (!analyser) return;
    analyser.getByteFrequencyData(bins);
    g.drawImage(canvas, -1, 0);  // scroll one pixel to the left
    for (let y = 0; y < canvas.height; y++) {
      const v = bins[Math.floor((canvas.height - 1 - y) * bins.length / canvas.height)];
      column.data.set([v, v * 0.6, 255 - v, 255], 4 * y);
    }
    g.putImageData(column, canvas.width - 1, 0);
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

async function start() {
  $("start").disabled = true;
  try {
    media = await navigator.mediaDevices.getUserMedia(
      { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (err) {
    setStatus("no microphone: " + err.message);
    $("start").disabled = false;
    return;
  }
  ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const source = ctx.createMediaStreamSource(media);
  const frameSize = Math.round(ctx.sampleRate * 0.02);  // 20 ms frames
  const capture = new AudioWorkletNode(ctx, "pcm-capture", { processorOptions: { frameSize } });
  analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  source.connect(capture);
  drawSpectrogram();

  ws = new WebSocket(streamUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: ctx.sampleRate, format: "s16le" }));
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") { playFrame(event.data); return; }
    const msg = JSON.parse(event.data);
    if (msg.type === "started") {
      modelRate = msg.model_sample_rate;
      setStatus(`streaming ${ctx.sampleRate} Hz → model ${modelRate} Hz (stream ${msg.stream_id})`);
      if (msg.kind === "lm") { $("lm").hidden = false; $("bars").hidden = true; $("play").disabled = false; }
      else makeBars(msg.labels);
      capture.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(toS16(e.data)); };
      $("stop").disabled = false;
    } else if (msg.type === "result") {
      showResult(msg);
    } else if (msg.type === "generated") {
      $("play").disabled = false;
    } else if (msg.type === "final") {
      setStatus("ended at " + (msg.position / modelRate).toFixed(2) + " s");
    } else if (msg.type === "error") {
      setStatus("server: " + msg.message);
    }
  };
  ws.onclose = () => { if ($("stop").disabled === false) setStatus("connection closed"); stop(false); };
}

function stop(sendEnd = true) {
  if (ws && sendEnd && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  analyser = null;
  $("stop").disabled = true;
  $("start").disabled = false;
}

$("start").onclick = start;
$("stop").onclick = () => stop(true);
$("play").onclick = () => {
  $("play").disabled = true;
  playhead = 0;
  ws.send(JSON.stringify({ type: "generate", seconds: 2, temperature: 1.0, top_p: 0.95 }));
};
