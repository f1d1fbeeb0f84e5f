// The mlxd page: the camera or the screen to the model as binary frames, questions as text or spoken into
// the microphone (an AudioWorklet at 16 kHz, sent as audio_chunk), answers as they stream, and spoken when
// asked. It speaks the original protocol on /ws of the server that served it. The token lives only in this
// page: it comes from the fragment (#token=, never sent over HTTP) or the field, and goes to the server
// only as the WebSocket subprotocol `mlxd.token.<token>`.
"use strict";

const DEFAULTS = { source: "camera", fps: 1, quality: 0.7, size: 640, prompt: "Describe what you see." };
const LIMITS = { fps: [0.1, 30], quality: [0.1, 1], size: [16, 8192] };
const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
const page = {
  ws: null,
  stream: null,
  capturing: false,
  starting: false,
  encoding: false,
  autostart: params.get("autostart") === "1",
  frameNumber: 0,
  questionNumber: 0,
  sent: 0,
  answered: 0,
  dropped: 0,
  sentAt: new Map(), // request id -> performance.now() when sent, until its first token
  frames: new Set(), // ids of frames in flight
  canvas: document.createElement("canvas"),
  mic: null, // { stream, context } while the microphone is on
  chunkNumber: 0,
  player: null, // { context, next (when the next chunk starts), sources (scheduled, not yet ended) }
  spokenSeconds: 0,
};

function inRange(value, name) {
  const [low, high] = LIMITS[name];
  return Number.isFinite(value) && value >= low && value <= high;
}

function numberParam(name) {
  const text = params.get(name);
  const value = text === null || text.trim() === "" ? NaN : Number(text);
  return inRange(value, name) ? value : DEFAULTS[name];
}

function control(name) {
  const value = Number($(name).value);
  return inRange(value, name) ? value : DEFAULTS[name];
}

function showError(code, message) {
  $("error").textContent = `${code}: ${message}`;
}

function setConnection(state) {
  const conn = $("conn");
  conn.dataset.state = state;
  conn.textContent = state;
}

function showCounters() {
  $("frames-sent").textContent = String(page.sent);
  $("frames-answered").textContent = String(page.answered);
  $("frames-dropped").textContent = String(page.dropped);
}

function sendJSON(message) {
  const ws = page.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showError("connection", "not connected to the server");
    return false;
  }
  ws.send(JSON.stringify(message));
  return true;
}

function configOnConnect() {
  const config = {};
  const maxTokens = params.get("max_tokens");
  if (maxTokens !== null && maxTokens.trim() !== "") {
    config.maxOutputTokens = Number(maxTokens);
    config.max_tokens_image = Number(maxTokens);
  }
  const temperature = params.get("temperature");
  if (temperature !== null && temperature.trim() !== "") config.temperature = Number(temperature);
  return Object.keys(config).length ? { type: "config", id: "config", ...config } : null;
}

function connect() {
  if (page.ws) {
    const old = page.ws;
    page.ws = null;
    old.close();
  }
  const token = $("token").value.trim();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  setConnection("connecting");
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/ws`, token ? [`mlxd.token.${token}`] : []);
  } catch (error) {
    setConnection("closed");
    showError("token", `cannot be sent as a WebSocket subprotocol (${error.message})`);
    return;
  }
  ws.binaryType = "arraybuffer";
  page.ws = ws;
  let opened = false;
  ws.onopen = () => {
    if (ws !== page.ws) return;
    opened = true;
    setConnection("open");
    $("error").textContent = "";
    sendJSON({ type: "get_status", id: "status" });
    const config = configOnConnect();
    if (config) sendJSON(config);
    if ($("speak").checked) speakAnswers();
    if (page.autostart) {
      page.autostart = false;
      start();
    }
  };
  ws.onmessage = (event) => {
    if (ws === page.ws && typeof event.data === "string") receive(JSON.parse(event.data));
  };
  ws.onclose = (event) => {
    if (ws !== page.ws) return;
    setConnection("closed");
    if (!opened) {
      showError("connection", "refused or unreachable (a missing or wrong token?); give the token and connect");
    } else {
      showError("connection", `closed by the server (${event.code}${event.reason ? ": " + event.reason : ""})`);
    }
  };
}

function receive(message) {
  const id = message.id;
  const isFrame = page.frames.has(id);
  const answer = $(isFrame ? "frame-answer" : "text-answer");
  switch (message.type) {
    case "status":
      $("model").textContent = message.model ?? "?";
      break;
    case "response_start":
      answer.textContent = "";
      break;
    case "token":
      if (page.sentAt.has(id)) {
        $("ttft").textContent = String(Math.round(performance.now() - page.sentAt.get(id)));
        page.sentAt.delete(id);
      }
      answer.textContent += message.content;
      break;
    case "response_complete": {
      answer.textContent = message.full_text;
      const tokens = message.usage ? message.usage.completion_tokens : 0;
      if (tokens > 0 && message.inference_time > 0) $("tps").textContent = (tokens / message.inference_time).toFixed(1);
      if (isFrame) page.answered += 1;
      ended(id);
      break;
    }
    case "frame_dropped":
      if (isFrame) page.dropped += 1;
      ended(id);
      break;
    case "error":
      showError(message.code, message.error);
      ended(id);
      break;
    case "transcript":
      $("heard").textContent = message.text;
      break;
    case "audio":
      play(message.audio, message.sample_rate);
      break;
    case "speech_started":
      silence(); // the user speaks over the answer: stop playing it (the server cuts it too)
      break;
  }
  if (message.type === "response_complete" && message.finish_reason === "interrupted") silence();
}

function player() {
  if (!page.player) page.player = { context: new AudioContext(), next: 0, sources: new Set() };
  return page.player;
}

function play(base64, rate) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const samples = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!samples.length) return;
  const { context, sources } = player();
  const buffer = context.createBuffer(1, samples.length, rate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  const start = Math.max(context.currentTime, page.player.next);
  source.start(start);
  page.player.next = start + buffer.duration;
  sources.add(source);
  source.onended = () => sources.delete(source);
  page.spokenSeconds += buffer.duration;
  $("spoken").textContent = page.spokenSeconds.toFixed(1);
}

function silence() {
  if (!page.player) return;
  for (const source of page.player.sources) source.stop();
  page.player.sources.clear();
  page.player.next = 0;
}

function sendAudio(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  const ws = page.ws;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "audio_chunk", id: `a${++page.chunkNumber}`, audio: btoa(binary) }));
  }
}

function speakAnswers() {
  if ($("speak").checked) player(); // made on the click, so that the browser lets it play
  sendJSON({ type: "config", id: "voice", responseModalities: $("speak").checked ? ["TEXT", "AUDIO"] : ["TEXT"] });
}

async function micOn() {
  if (page.mic || page.starting) return;
  if (!navigator.mediaDevices) {
    showError("microphone", "the browser allows it only on https:// or localhost");
    return;
  }
  page.starting = true;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    const context = new AudioContext();
    await context.audioWorklet.addModule("/static/mic.js");
    const node = new AudioWorkletNode(context, "mic-resampler");
    node.port.onmessage = (event) => sendAudio(event.data);
    const mute = context.createGain(); // pulls the worklet through the graph without playing the microphone
    mute.gain.value = 0;
    context.createMediaStreamSource(stream).connect(node).connect(mute).connect(context.destination);
    page.mic = { stream, context };
    $("mic").setAttribute("aria-pressed", "true");
  } catch (error) {
    showError("microphone", error.message || error.name);
  } finally {
    page.starting = false;
  }
}

function micOff() {
  if (!page.mic) return;
  page.mic.stream.getTracks().forEach((track) => track.stop());
  page.mic.context.close();
  page.mic = null;
  $("mic").setAttribute("aria-pressed", "false");
}

function ended(id) {
  page.sentAt.delete(id);
  page.frames.delete(id);
  showCounters();
}

function ask() {
  const question = $("question").value.trim();
  if (!question) return;
  const id = `q${++page.questionNumber}`;
  if (sendJSON({ type: "text_input", content: question, id })) {
    page.sentAt.set(id, performance.now());
    $("text-answer").textContent = "";
  }
}

function binaryFrame(header, jpeg) {
  const encoded = new TextEncoder().encode(JSON.stringify(header));
  const message = new Uint8Array(4 + encoded.length + jpeg.length);
  new DataView(message.buffer).setUint32(0, encoded.length); // big-endian
  message.set(encoded, 4);
  message.set(jpeg, 4 + encoded.length);
  return message;
}

async function sendFrame() {
  const ws = page.ws;
  const video = $("preview");
  // A tick is skipped while the last frame is still being encoded or has not left the socket: the newest
  // frame is the one worth sending, never a queue of old ones.
  if (page.encoding || !ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > 0 || !video.videoWidth) return;
  page.encoding = true;
  try {
    const size = control("size");
    const scale = Math.min(1, size / Math.max(video.videoWidth, video.videoHeight));
    const canvas = page.canvas;
    canvas.width = Math.max(1, Math.round(video.videoWidth * scale));
    canvas.height = Math.max(1, Math.round(video.videoHeight * scale));
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", control("quality")));
    if (!blob || !page.capturing || ws !== page.ws || ws.readyState !== WebSocket.OPEN) return;
    const jpeg = new Uint8Array(await blob.arrayBuffer());
    if (!page.capturing || ws !== page.ws) return;
    const source = page.stream.source;
    const id = `f${++page.frameNumber}`;
    const type = source === "screen" ? "screen_frame" : "video_frame";
    ws.send(binaryFrame({ type, id, prompt: $("prompt").value || DEFAULTS.prompt, source }, jpeg));
    page.frames.add(id);
    page.sentAt.set(id, performance.now());
    page.sent += 1;
    showCounters();
  } finally {
    page.encoding = false;
  }
}

function pace() {
  // At most `fps` frames a second, on presented video frames where the browser says when they come.
  const video = $("preview");
  let due = performance.now();
  const onTick = (now) => {
    if (!page.capturing) return;
    if (now >= due) {
      const interval = 1000 / control("fps");
      due += interval;
      if (due <= now) due = now + interval;
      sendFrame();
    }
    schedule();
  };
  const schedule = () => {
    if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onTick);
    else setTimeout(() => onTick(performance.now()), Math.min(1000 / control("fps"), 100));
  };
  schedule();
}

async function start() {
  if (page.capturing || page.starting) return;
  const source = $("source").value;
  const media = navigator.mediaDevices;
  if (!media) {
    showError("capture", "the browser allows capture only on https:// or localhost");
    return;
  }
  let stream;
  page.starting = true; // asking for the camera takes a while: a second click must not open a second one
  try {
    stream = source === "screen"
      ? await media.getDisplayMedia({ video: true, audio: false })
      : await media.getUserMedia({ video: true, audio: false });
  } catch (error) {
    showError("capture", `${source}: ${error.message || error.name}`);
    return;
  } finally {
    page.starting = false;
  }
  stream.source = source;
  page.stream = stream;
  page.capturing = true;
  stream.getVideoTracks().forEach((track) => track.addEventListener("ended", stop));
  const video = $("preview");
  video.srcObject = stream;
  $("start").disabled = true;
  $("stop").disabled = false;
  try {
    await video.play();
  } catch (error) {
    showError("capture", `preview: ${error.message}`);
  }
  pace();
}

function stop() {
  page.capturing = false;
  if (page.stream) page.stream.getTracks().forEach((track) => track.stop());
  page.stream = null;
  $("preview").srcObject = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

function init() {
  const source = params.get("source");
  $("source").value = source === "screen" ? "screen" : DEFAULTS.source;
  for (const name of ["fps", "quality", "size"]) $(name).value = String(numberParam(name));
  $("prompt").value = params.get("prompt") ?? DEFAULTS.prompt;
  $("token").value = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  $("question-form").addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  $("start").addEventListener("click", start);
  $("mic").addEventListener("click", () => (page.mic ? micOff() : micOn()));
  $("speak").checked = params.get("speak") === "1";
  $("speak").addEventListener("change", speakAnswers);
  $("stop").addEventListener("click", stop);
  showCounters();
  connect();
}

init();
