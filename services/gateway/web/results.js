// How the page shows how a job ended: one function per shape docs/api.md documents (a failed or
// cancelled job, a purged result, an annotation job's outcome, a Thinking answer, segments with
// and without times, a plain answer). It only builds DOM from the job it is given (no requests),
// so app.js calls it for a job it has just read and the page test can call it with the
// documented examples. Text goes in with textContent, never as HTML.

const FLAGS = { no_timestamp: "no timestamp", end_before_start: "ends before it starts" };

// The elements a job's outcome is drawn into (index.html's job panel).
export function resultView() {
  const $ = (id) => document.getElementById(id);
  return {
    outcome: $("outcome"), thinking: $("thinking"), thinkingText: $("thinking-text"),
    transcript: $("transcript"), list: $("segment-list"), track: $("segments-track"),
  };
}

export function clearResult(view) {
  view.outcome.replaceChildren();
  view.outcome.className = "";
  view.thinking.hidden = true;
  view.thinkingText.textContent = "";
  view.transcript.textContent = "";
  view.list.replaceChildren();
  view.track.replaceChildren();
}

// `play(start, end, block)` plays that part of the job's audio (app.js owns the audio).
export function showResult(job, view, play) {
  clearResult(view);
  if (job.status === "failed" || job.status === "cancelled") return showEnded(job, view);
  if (job.status !== "succeeded") return; // still under way: the progress line says where
  if (!job.result) return showPurged(job, view);
  if (job.task === "annotate") return showAnnotation(job.result, view);
  showAnswer(job, view, play);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function showEnded(job, view) {
  view.outcome.className = job.status === "failed" ? "error" : "notice";
  view.outcome.append(element("strong", job.status === "failed" ? "Failed" : "Cancelled"));
  if (job.error) {
    view.outcome.append(`: ${job.error.message} `, element("code", job.error.code));
  }
  if (job.purged_at) view.outcome.append(" (purged)");
}

function showPurged(job, view) {
  view.outcome.className = "notice";
  const when = job.purged_at ? new Date(job.purged_at).toLocaleString() : "";
  view.outcome.textContent = `Succeeded; its audio and result were purged ${when}`.trim();
}

function showAnnotation(result, view) {
  const seconds = result.seconds != null ? ` in ${Math.round(result.seconds)} s` : "";
  view.outcome.className = "annotation";
  view.outcome.append(element("p", `Annotated ${result.annotated} of ${result.items} clips ` +
    `(${result.failed} failed)${seconds}`));
  const datasets = element("ul", undefined, "datasets");
  for (const [kind, what] of [["captions", "unified captions"], ["sft", "instruction pairs"]]) {
    const made = result[kind];
    if (!made) continue;
    const item = element("li");
    item.append(element("strong", made.dataset), `: ${made.clips} clips of ${what} `,
      element("code", made.manifest));
    datasets.append(item);
  }
  if (!datasets.children.length) datasets.append(element("li", "no dataset was made"));
  view.outcome.append(datasets);
  showFailures(result, view);
}

function showFailures(result, view) {
  const failures = result.failures || [];
  if (!failures.length) return;
  const list = element("ul", undefined, "failures");
  for (const failure of failures) {
    const item = element("li", undefined, "error");
    item.append(element("strong", failure.id ?? "(no id)"), `: ${failure.message} `,
      element("code", failure.code));
    list.append(item);
  }
  const more = result.failed - failures.length;
  if (more > 0) list.append(element("li", `… and ${more} more (all in ${result.failures_key})`));
  view.outcome.append(element("p", "Failed items:"), list);
}

function showAnswer(job, view, play) {
  const result = job.result;
  if (result.thinking) {
    view.thinkingText.textContent = result.thinking;
    view.thinking.hidden = false;
  }
  view.transcript.textContent = result.text ?? "";
  if (result.finish_reason === "length") {
    view.outcome.className = "notice";
    view.outcome.textContent = "The answer ran into max_new_tokens and is cut there.";
  }
  showSegments(result.segments || [], job.audio_seconds || 1, view, play);
}

// Timed segments go on the timeline and in the list; a segment without a time only in the list.
function showSegments(segments, duration, view, play) {
  segments.forEach((segment, i) => {
    const item = element("li");
    const time = element("time");
    item.append(time, segment.text);
    if (segment.flag) item.append(element("span", FLAGS[segment.flag] || segment.flag, "flag"));
    view.list.append(item);
    if (segment.start == null) {
      time.textContent = "—";
      item.className = "untimed";
      return;
    }
    // A point in time is a mark on the timeline; it plays until the next timed segment.
    const later = segments.slice(i + 1).find((next) => next.start != null);
    const stop = segment.end ?? (later ? later.start : duration);
    time.textContent = segment.end == null ? segment.start.toFixed(2)
      : `${segment.start.toFixed(2)}–${segment.end.toFixed(2)}`;
    const end = Math.max(segment.end ?? 0, segment.start);
    const block = timelineBlock(segment, end, duration, time.textContent);
    block.onclick = () => play(segment.start, stop, block);
    item.onclick = block.onclick;
    view.track.append(block);
  });
}

function timelineBlock(segment, end, duration, label) {
  const block = element("div", segment.text, "segment");
  block.style.left = `${(100 * segment.start) / duration}%`;
  block.style.width = `${Math.max(0.5, (100 * (end - segment.start)) / duration)}%`;
  block.title = `${label} s: ${segment.text}`;
  block.dataset.start = segment.start;
  block.dataset.end = end;
  return block;
}
