// The gateway's web page: sign in with an API key, upload or record audio, watch the job over
// server-sent events, and read the transcript on a waveform timeline (click a segment to play
// it). Plain ES modules and the browser's own APIs (fetch streams, Web Audio, MediaRecorder):
// nothing to build. The key stays in this tab (sessionStorage) and is sent as a bearer token;
// EventSource cannot send headers, so the event stream is read with fetch. How a finished job
// is shown, shape by shape, lives in results.js.

import { clearResult, resultView, showResult as renderResult } from "./results.js";
import { watchRuns } from "./runs.js";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("moss-key"), audio: null, blob: null, stopAt: null };

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let error = { code: "http_error", message: `HTTP ${response.status}` };
    try {
      error = (await response.json()).error || error;
    } catch {}
    throw new ApiError(response.status, error.code, error.message);
  }
  return response;
}

// --- signing in ---------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    await api("/v1/jobs?limit=1");
  } catch (error) {
    state.key = null;
    throw error;
  }
  sessionStorage.setItem("moss-key", key);
  $("sign-in-form").hidden = true;
  $("signed-in").hidden = false;
  $("who").textContent = `signed in (${key.slice(0, 10)}…)`;
  $("app").hidden = false;
  await listJobs();
  watchRuns(api); // the pipeline runs panel (runs.js)
}

function signOut() {
  sessionStorage.removeItem("moss-key");
  location.reload();
}

// --- recording ----------------------------------------------------------------------------

let recorder = null;

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    state.blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    $("file").value = "";
    $("recording").hidden = true;
    $("record").textContent = "● Record again";
  };
  recorder.start();
  $("recording").hidden = false;
}

// --- a job --------------------------------------------------------------------------------

async function submitJob(event) {
  event.preventDefault();
  $("submit-error").textContent = "";
  const file = $("file").files[0];
  const audio = file || state.blob;
  if (!audio) {
    $("submit-error").textContent = "choose a file or record something first";
    return;
  }
  const form = new FormData();
  form.append("file", audio, file ? file.name : "recording.webm");
  form.append("task", $("task").value);
  if ($("prompt").value.trim()) form.append("prompt", $("prompt").value.trim());
  try {
    const job = await (await api("/v1/jobs", { method: "POST", body: form })).json();
    await showJob(job, audio);
  } catch (error) {
    $("submit-error").textContent = `${error.message} [${error.code || "error"}]`;
  }
}

// Exported for the page test, which shows each documented job shape through it.
export async function showJob(job, audio = null) {
  $("job-panel").hidden = false;
  $("job-id").textContent = job.id;
  clearResult(resultView());
  showProgress(job);
  if (state.audio) state.audio.pause();
  state.audio = null;
  clearWaveform(); // the job shown before may have had audio; this one may have none
  // An annotation job's input is a list of clips, not audio: it has no waveform to draw.
  const hasAudio = job.task !== "annotate";
  $("timeline").hidden = !hasAudio;
  $("no-waveform").hidden = true;
  const blob = hasAudio ? audio || (await fetchAudio(job.id)) : null;
  if (blob) await drawWaveform(blob);
  if (job.status === "queued" || job.status === "running") job = await follow(job.id);
  showProgress(job);
  await showResult(job);
  await listJobs();
}

function showProgress(job) {
  $("progress").value = job.progress ?? 0;
  $("status").textContent = `${job.status} (${job.stage})` + (job.error ? `: ${job.error.message}` : "");
}

async function follow(jobId) {
  // The job's server-sent events: `change` (status, stage, progress), `text`, then `done`.
  const response = await api(`/v1/jobs/${jobId}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const current = { status: "queued", stage: "queued", progress: 0 };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const fields = {};
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const at = line.indexOf(": ");
        fields[line.slice(0, at)] = line.slice(at + 2);
      }
      if (!fields.event) continue;
      const data = JSON.parse(fields.data || "{}");
      if (fields.event === "done") {
        reader.cancel();
        return data;
      }
      if (fields.event === "change") Object.assign(current, data);
      if (fields.event === "text") $("transcript").textContent = data.text ?? "";
      showProgress(current);
    }
  }
  return (await api(`/v1/jobs/${jobId}`)).json();
}

async function showResult(job) {
  renderResult(job, resultView(), play);
}

// --- audio: waveform and playback ---------------------------------------------------------

async function fetchAudio(jobId) {
  try {
    return await (await api(`/v1/jobs/${jobId}/audio`)).blob();
  } catch {
    return null; // purged: the transcript is shown without the waveform
  }
}

function clearWaveform() {
  const canvas = $("waveform");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  $("playhead").style.display = "none";
}

async function drawWaveform(blob) {
  const canvas = $("waveform");
  const context = canvas.getContext("2d");
  state.audio = new Audio(URL.createObjectURL(blob));
  state.audio.ontimeupdate = movePlayhead;
  try {
    const decoded = await new AudioContext().decodeAudioData(await blob.arrayBuffer());
    const samples = decoded.getChannelData(0);
    const step = Math.max(1, Math.floor(samples.length / canvas.width));
    const middle = canvas.height / 2;
    context.fillStyle = "#4f8ef7";
    for (let x = 0; x < canvas.width; x++) {
      let peak = 0;
      for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
        peak = Math.max(peak, Math.abs(samples[i]));
      }
      context.fillRect(x, middle - peak * middle, 1, Math.max(1, 2 * peak * middle));
    }
  } catch {
    $("no-waveform").hidden = false; // the audio still plays; only its drawing is missing
  }
}

function play(start, end, block) {
  if (!state.audio) return;
  document.querySelectorAll(".segment.playing").forEach((el) => el.classList.remove("playing"));
  block.classList.add("playing");
  state.audio.currentTime = start;
  state.stopAt = end;
  state.audio.play();
}

// A click on the waveform plays from there (results without timed segments have no blocks).
function playFrom(event) {
  if (!state.audio || !state.audio.duration) return;
  const box = event.currentTarget.getBoundingClientRect();
  document.querySelectorAll(".segment.playing").forEach((el) => el.classList.remove("playing"));
  state.audio.currentTime = ((event.clientX - box.left) / box.width) * state.audio.duration;
  state.stopAt = null;
  state.audio.play();
}

function movePlayhead() {
  const audio = state.audio;
  const head = $("playhead");
  if (!audio.duration) return;
  head.style.display = "block";
  head.style.left = `${(100 * audio.currentTime) / audio.duration}%`;
  if (state.stopAt !== null && audio.currentTime >= state.stopAt) {
    audio.pause();
    state.stopAt = null;
  }
}

// --- past jobs ----------------------------------------------------------------------------

async function listJobs() {
  const { jobs } = await (await api("/v1/jobs?limit=50")).json();
  const rows = jobs.map((job) => {
    const row = document.createElement("tr");
    row.dataset.id = job.id;
    for (const text of [new Date(job.created_at).toLocaleString(), job.task, job.status,
      job.audio_seconds.toFixed(1), job.id.slice(0, 8)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.onclick = async () => showJob(await (await api(`/v1/jobs/${job.id}`)).json());
    return row;
  });
  $("jobs").replaceChildren(...rows);
}

// --- wiring -------------------------------------------------------------------------------

$("sign-in-form").onsubmit = async (event) => {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    await signIn($("api-key").value.trim());
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
};
$("sign-out").onclick = signOut;
$("record").onclick = () => startRecording().catch((e) => ($("submit-error").textContent = e.message));
$("stop").onclick = () => recorder && recorder.stop();
$("file").onchange = () => (state.blob = null);
$("job-form").onsubmit = submitJob;
$("refresh").onclick = listJobs;
$("waveform").onclick = playFrom;
if (state.key) signIn(state.key).catch(() => sessionStorage.removeItem("moss-key"));
