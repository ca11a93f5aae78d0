"""The MLflow model registry: tracked runs, registered versions with lineage, gated promotion.

Registered models are named `moss-audio-{size}-{flavor}` (`moss-audio-8b-thinking`,
`moss-audio-tiny-instruct`, ...). Versions move between the aliases `candidate`, `staging` and
`production` (MLflow stages are deprecated). Every version carries its lineage as tags: the run,
the data manifest digest, the code version, the parent model, the evaluation metrics. Promotion
to an alias passes only when the version meets the configured thresholds and does not regress
against the alias's current holder beyond a tolerance; every decision, accepted or refused, is
recorded on the version, and each alias keeps a history so `rollback` can move it back.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .modelref import ALIASES

# Every metric the evaluation writes (pipelines.evaluate): the label family it measures and
# whether higher is better. The gate groups thresholds by family: a candidate evaluated on a
# manifest without speech has no `wer`, so the speech thresholds are skipped, not failed.
METRICS: dict[str, tuple[str, bool]] = {
    "wer": ("speech", False),
    "cer": ("speech", False),
    "segments_wer": ("speech", False),
    "segments_aas_ms": ("speech", False),
    "event_qa_accuracy": ("events", True),
    "count_accuracy": ("events", True),
    "timestamp_error_median_s": ("events", False),
    "aas_ms": ("events", False),
    "caption_keyword_recall": ("caption", True),
    "caption_wer": ("caption", False),
    "caption_cer": ("caption", False),
    "instruction_exact_match": ("instructions", True),
    "instruction_token_f1": ("instructions", True),
}
HIGHER_IS_BETTER = {metric: higher for metric, (_, higher) in METRICS.items()}

SIZES = ("tiny", "small", "4b", "8b")
FLAVORS = ("instruct", "thinking")
CHECKPOINT_ARTIFACT = "checkpoint"
IMPORTED = "imported"  # metrics_status of a version registered by an import, not evaluated
HISTORY_TAG = "alias_history.{alias}"
# Thresholds a version must meet to move to an alias (per metric: min for higher-is-better
# metrics, max for lower-is-better ones), for every model; `models` holds per-model-name
# overrides (a null limit drops a default). Overridden by MOSS_PROMOTION_THRESHOLDS (JSON, same
# shape); docs/pipelines.md, "Promotion gate".
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "production": {"event_qa_accuracy": 0.5, "timestamp_error_median_s": 2.0, "wer": 0.5},
    # The tiny variant is the demo model `mossctl up` trains from scratch in ~10 CPU minutes
    # (docs/pipelines.md has its figures): its speech is gated loosely, its events as above.
    "models": {"moss-audio-tiny-instruct": {"production": {"wer": 0.8}}},
}
DEFAULT_TOLERANCE = 0.02  # absolute slack when comparing against the current holder


class PromotionRefused(Exception):
    def __init__(self, decision: dict[str, Any]) -> None:
        super().__init__(decision["reason"])
        self.decision = decision


def model_name(size: str, flavor: str) -> str:
    if size not in SIZES or flavor not in FLAVORS:
        raise ValueError(f"variant must be one of {SIZES} x {FLAVORS}")
    return f"moss-audio-{size}-{flavor}"


def code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"moss-audio-platform=={version('moss-audio-platform')}"


@dataclass
class Decision:
    model: str
    version: str
    alias: str
    accepted: bool
    reason: str
    actor: str
    at: str
    candidate_metrics: dict[str, float]
    holder: str | None = None
    holder_metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # --- versions --------------------------------------------------------------------------

    def register(
        self,
        name: str,
        run_id: str,
        *,
        data_digest: str,
        parent: str | None,
        metrics: dict[str, float],
        description: str = "",
    ) -> str:
        """Register the run's checkpoint artifact as a new version of `name`; returns it."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        run = self.client.get_run(run_id)
        source = f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACT}"
        tags = {
            "run_id": run_id,
            "data_digest": data_digest,
            "code_version": run.data.tags.get("code_version", code_version()),
            "parent_model": parent or "",
            "metrics": json.dumps(metrics, sort_keys=True),
        }
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description
        )
        return str(version.version)

    def register_import(
        self,
        name: str,
        run_id: str,
        *,
        source: str,
        revision: str | None,
        checkpoint_sha256: str,
        trained_for: str,
    ) -> str:
        """Register an imported checkpoint (pipelines/importer.py): lineage, no metrics."""
        version = self.register(
            name,
            run_id,
            data_digest="",
            parent=None,
            metrics={},
            description=f"imported from {source}" + (f" at {revision}" if revision else ""),
        )
        tags = {
            "metrics_status": IMPORTED,
            "source": source,
            "revision": revision or "",
            "checkpoint_sha256": checkpoint_sha256,
            "trained_for": trained_for,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        return version

    def version_with_tag(self, name: str, key: str, value: str) -> str | None:
        """The first version of `name` whose tag `key` equals `value` (None: none, or no model)."""
        try:
            versions = self.client.search_model_versions(f"name='{name}'")
        except MlflowException:
            return None
        matches = sorted(int(v.version) for v in versions if v.tags.get(key) == value)
        return str(matches[0]) if matches else None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def version_metrics(self, name: str, version: str) -> dict[str, float]:
        raw = self.client.get_model_version(name, version).tags.get("metrics", "{}")
        return {k: float(v) for k, v in json.loads(raw).items()}

    def alias_holder(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def download(self, name: str, version: str, target: Path) -> Path:
        """The version's checkpoint directory on local disk (downloaded once per version)."""
        target = Path(target)
        done = target / ".complete"
        if not done.is_file():
            source = self.client.get_model_version(name, version).source
            from mlflow.artifacts import download_artifacts

            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            download_artifacts(
                artifact_uri=source, dst_path=str(tmp), tracking_uri=self.tracking_uri
            )
            downloaded = tmp / CHECKPOINT_ARTIFACT if (tmp / CHECKPOINT_ARTIFACT).is_dir() else tmp
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                import shutil

                shutil.rmtree(target)
            downloaded.rename(target)
            done.touch()
        return target

    # --- promotion -------------------------------------------------------------------------

    def promote(
        self,
        name: str,
        version: str,
        alias: str,
        actor: str,
        thresholds: dict[str, dict[str, float]] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        force: bool = False,
        reason: str = "",
    ) -> Decision:
        """Move `alias` to `version` if the gate passes; record the decision either way.

        An imported version has no metrics to judge: only an explicit (forced) promotion moves
        an alias to it, and the decision says so.
        """
        if alias not in ALIASES:
            raise ValueError(f"alias must be one of {', '.join(ALIASES)}")
        imported = self.version_tags(name, version).get("metrics_status") == IMPORTED
        candidate = self.version_metrics(name, version)
        if thresholds is None:
            limits = load_thresholds(name).get(alias, {})
        else:
            limits = thresholds_for(thresholds, name).get(alias, {})
        holder = self.alias_holder(name, alias)
        holder_metrics = self.version_metrics(name, holder) if holder and holder != version else {}
        problems: list[str] = []
        if imported:
            problems.append(
                f"v{version} is an imported checkpoint that was not evaluated here; promote it "
                "explicitly (--force, recorded) or run the evaluate pipeline on it first"
            )
            limits = {}
        applied, skipped = gate_families(limits, candidate)
        if limits and not applied and not imported:
            problems.append(
                "evaluated on none of the families the thresholds check "
                f"({', '.join(sorted(skipped))}): evaluate on a manifest that has one"
            )
        for metric, limit in limits.items():
            value = candidate.get(metric)
            higher = HIGHER_IS_BETTER.get(metric, True)
            if metric in METRICS and METRICS[metric][0] in skipped:
                continue
            if value is None:
                problems.append(f"{metric} is missing")
            elif (value < limit) if higher else (value > limit):
                problems.append(
                    f"{metric} {value:.4g} {'<' if higher else '>'} threshold {limit:g}"
                )
        for metric, current in holder_metrics.items():
            value = candidate.get(metric)
            if metric not in HIGHER_IS_BETTER or value is None:
                continue
            worse = current - value if HIGHER_IS_BETTER[metric] else value - current
            if worse > tolerance * max(1.0, abs(current)):
                problems.append(f"{metric} regresses: {value:.4g} vs {current:.4g} (v{holder})")
        accepted = force or not problems
        if imported and force:
            reason = f"imported checkpoint promoted explicitly by {actor} ({reason or 'forced'})"
        elif force and problems:
            reason = "forced by " + actor
        else:
            reason = "; ".join(problems) if problems else "meets thresholds, no regression"
            if skipped and not problems:
                reason += f" (not evaluated, skipped: {', '.join(sorted(skipped))})"
        decision = Decision(
            model=name,
            version=version,
            alias=alias,
            accepted=accepted,
            reason=reason,
            actor=actor,
            at=datetime.now(UTC).isoformat(),
            candidate_metrics=candidate,
            holder=holder,
            holder_metrics=holder_metrics,
            thresholds=limits,
        )
        self.client.set_model_version_tag(
            name, version, f"decision.{alias}.{_stamp()}", json.dumps(decision.as_dict())
        )
        if not accepted:
            raise PromotionRefused(decision.as_dict())
        self._move_alias(name, alias, version)
        return decision

    def rollback(self, name: str, alias: str = "production", actor: str = "") -> str:
        """Move `alias` back to the version that held it before; returns that version."""
        history = self._history(name, alias)
        if len(history) < 2:
            raise ValueError(f"{name}@{alias} has no earlier version to roll back to")
        previous = history[-2]
        self.client.set_registered_model_alias(name, alias, previous)
        history = history[:-1]
        self.client.set_registered_model_tag(
            name, HISTORY_TAG.format(alias=alias), json.dumps(history)
        )
        self.client.set_model_version_tag(
            name,
            previous,
            f"decision.{alias}.{_stamp()}",
            json.dumps({"rollback": True, "actor": actor, "version": previous}),
        )
        return previous

    def _history(self, name: str, alias: str) -> list[str]:
        tags = self.client.get_registered_model(name).tags
        return json.loads(tags.get(HISTORY_TAG.format(alias=alias), "[]"))

    def _move_alias(self, name: str, alias: str, version: str) -> None:
        history = [*[v for v in self._history(name, alias) if v != version][-19:], version]
        self.client.set_registered_model_alias(name, alias, version)
        self.client.set_registered_model_tag(
            name, HISTORY_TAG.format(alias=alias), json.dumps(history)
        )

    # --- listing ---------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Every registered model with its versions, aliases and metrics."""
        out = []
        for model in self.client.search_registered_models():
            aliases = dict(model.aliases or {})
            versions = []
            for version in self.client.search_model_versions(f"name='{model.name}'"):
                number = str(version.version)
                versions.append(
                    {
                        "version": number,
                        "aliases": sorted(a for a, v in aliases.items() if str(v) == number),
                        "metrics": json.loads(version.tags.get("metrics", "{}")),
                        "run_id": version.run_id,
                        "data_digest": version.tags.get("data_digest"),
                        "code_version": version.tags.get("code_version"),
                        "parent_model": version.tags.get("parent_model") or None,
                        "metrics_status": version.tags.get("metrics_status", "evaluated"),
                        "source": version.tags.get("source") or None,
                        "trained_for": version.tags.get("trained_for") or None,
                        "created_at": version.creation_timestamp,
                    }
                )
            versions.sort(key=lambda v: int(v["version"]))
            out.append(
                {
                    "name": model.name,
                    "aliases": {a: str(v) for a, v in aliases.items()},
                    "versions": versions,
                }
            )
        return out


def _stamp() -> str:
    """A tag-safe UTC timestamp (MLflow tag keys allow no `+`)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def gate_families(
    limits: dict[str, float], candidate: dict[str, float]
) -> tuple[set[str], set[str]]:
    """The families whose thresholds apply (the candidate has a metric of the family) and those
    skipped (it was not evaluated on them). A metric outside METRICS is always checked."""
    families = {METRICS[m][0] for m in limits if m in METRICS}
    evaluated = {METRICS[m][0] for m in candidate if m in METRICS}
    applied = (families & evaluated) | ({"other"} if set(limits) - set(METRICS) else set())
    return applied, families - evaluated


def thresholds_for(config: dict[str, Any], name: str) -> dict[str, dict[str, float]]:
    """The limits per alias for the model `name`: the defaults, then its own entries on top."""
    merged = {alias: dict(v) for alias, v in config.items() if alias != "models"}
    for alias, limits in (config.get("models") or {}).get(name, {}).items():
        entry = merged.setdefault(alias, {})
        for metric, limit in limits.items():
            if limit is None:
                entry.pop(metric, None)
            else:
                entry[metric] = limit
    return merged


def load_thresholds(name: str = "") -> dict[str, dict[str, float]]:
    """MOSS_PROMOTION_THRESHOLDS for model `name`, read when a promotion is decided (not cached)."""
    from .settings import Settings

    raw = Settings().promotion_thresholds
    return thresholds_for(json.loads(raw) if raw else DEFAULT_THRESHOLDS, name)
