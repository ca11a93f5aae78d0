// Pipeline runs on the page: the signed-in key's runs (an admin's: every tenant's), newest first,
// each with its status and progress (the pipeline step; training step of total, loss, time
// left), from GET /v1/pipelines/runs. While a run is queued or running the list reads itself
// again every few seconds; a key that may not read runs sees no panel.

const ACTIVE = new Set(["queued", "running"]);
const REFRESH_MS = 3000;
let timer = null;

// "train · step 40/200 · loss 1.234 · 42 s left" (only what the run has said so far).
export function progressText(run) {
  const p = run.progress || {};
  const parts = [];
  if (p.pipeline_step) parts.push(p.pipeline_step);
  if (p.step != null && p.total_steps) parts.push(`step ${p.step}/${p.total_steps}`);
  if (p.loss != null) parts.push(`loss ${p.loss.toFixed(3)}`);
  if (p.eta_s != null && ACTIVE.has(run.status)) parts.push(`${Math.round(p.eta_s)} s left`);
  if (run.error && !ACTIVE.has(run.status)) parts.push(run.error.message);
  return parts.join(" · ");
}

function bar(run) {
  const meter = document.createElement("progress");
  const p = run.progress || {};
  meter.max = 1;
  if (run.status === "succeeded") meter.value = 1;
  else if (p.step != null && p.total_steps) meter.value = Math.min(1, p.step / p.total_steps);
  else if (!ACTIVE.has(run.status)) meter.value = 0;
  else meter.removeAttribute("value"); // running, nothing counted yet: indeterminate
  return meter;
}

function row(run) {
  const tr = document.createElement("tr");
  tr.dataset.id = run.id;
  const made = run.model ? `${run.model} v${run.version}` : "";
  const cells = [new Date(run.created_at).toLocaleString(), run.name, run.status, null, made, run.id];
  for (const text of cells) {
    const cell = document.createElement("td");
    if (text === null) {
      const box = document.createElement("div");
      const label = document.createElement("span");
      box.className = "run-progress";
      label.textContent = progressText(run);
      box.append(bar(run), label);
      cell.append(box);
    } else {
      cell.textContent = text;
    }
    tr.append(cell);
  }
  return tr;
}

// Draw the list; `api` is the page's fetch with the key (app.js).
export async function listRuns(api) {
  clearTimeout(timer);
  const panel = document.getElementById("runs-panel");
  let page;
  try {
    page = await (await api("/v1/pipelines/runs?limit=20")).json();
  } catch (error) {
    if (error.status === 403) {
      panel.hidden = true; // this key reads no runs
      return;
    }
    throw error;
  }
  panel.hidden = false;
  document.getElementById("runs").replaceChildren(...page.runs.map(row));
  document.getElementById("no-runs").hidden = page.runs.length > 0;
  if (page.runs.some((run) => ACTIVE.has(run.status))) {
    timer = setTimeout(() => listRuns(api).catch(() => {}), REFRESH_MS);
  }
}

export function watchRuns(api) {
  document.getElementById("runs-refresh").onclick = () => listRuns(api).catch(() => {});
  return listRuns(api).catch(() => {});
}
