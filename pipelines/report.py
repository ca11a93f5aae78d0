"""The evaluation report: plots a person would rather look at than read, plus a summary.

`metrics.png`: this version's metrics per task; `history.png`: each metric across the earlier
runs of the same variant and this one; `report.md`: the figures and a sample of answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

SHARES = ("event_qa_accuracy", "count_accuracy", "caption_keyword_recall")


def write_report(
    metrics: dict[str, float], predictions: list[Any], history: list[dict[str, float]], out: Path
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    shares = {k: metrics[k] for k in SHARES if k in metrics}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(shares), list(shares.values()), color="#4c72b0")
    ax.set_xlim(0, 1)
    ax.axvline(0.2, color="grey", linestyle=":", label="event QA chance (1/5)")
    ax.set_title("Accuracy by task (held-out split)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)

    runs = [*history, metrics]
    keys = [
        k
        for k in ("event_qa_accuracy", "timestamp_error_median_s", "aas_ms", "caption_wer")
        if any(k in r for r in runs)
    ]
    fig, axes = plt.subplots(len(keys) or 1, 1, figsize=(6, 2 * max(1, len(keys))), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=False):
        points = [(i, r[key]) for i, r in enumerate(runs, 1) if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_ylabel(key, fontsize=8)
        ax.set_xlabel("run (this one last)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)

    lines = ["# Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
    lines += [
        "",
        "![metrics](metrics.png)",
        "",
        "![history](history.png)",
        "",
        "## Sample answers",
        "",
        "| kind | reference | answer |",
        "|---|---|---|",
    ]
    for p in predictions[:20]:
        ref = p.example.answer.replace("\n", " / ")
        lines.append(f"| {p.example.kind} | {ref} | {p.text.replace(chr(10), ' / ')} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out
