"""The MLflow model registry: tracked runs, registered versions with lineage, gated promotion.

Registered models are named `moss-audio-{size}-{flavor}` (`moss-audio-8b-thinking`,
`moss-audio-tiny-instruct`, ...). Versions move between the aliases `candidate`, `staging` and
`production` (MLflow stages are deprecated). Every version carries its lineage as tags: the run,
the data manifest digest, the code version, the parent model, the evaluation metrics. Promotion
to an alias passes only when the version meets the configured thresholds and does not regress
against the alias's current holder beyond a tolerance; every decision, accepted or refused, is
recorded on the version, and each alias keeps a history so `rollback` can move it back.

Figures are compared only where both sides were measured on the same evaluation set. Each
evaluation of a version is a tag `evaluation.<set digest>` (what it was measured on: the
manifest and its digest, the examples per family, the evaluator's code version, the metrics);
the gate picks a set both candidate and holder have (the model name's reference set first,
then the candidate's own held-out split) and refuses, saying how to score the holder there,
when there is none, a holder never evaluated (an import) included. Two different held-out sets
decide nothing about which model is better.
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
EVALUATION_TAG = "evaluation."  # + the set's digest: one evaluation of the version (JSON)
PRIMARY_SET_TAG = "evaluation_set"  # the digest of the version's own held-out split
REFERENCE_SET_TAG = "eval_set"  # registered-model tag: the manifest of the name's reference set
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


class EvaluationSetMismatch(PromotionRefused):
    """Candidate and holder were measured on no common evaluation set: refused, not compared.

    `target` is the candidate's evaluation the holder should be scored on (the fix)."""

    def __init__(self, decision: dict[str, Any], holder: str, target: dict[str, Any]) -> None:
        super().__init__(decision)
        self.holder = holder
        self.target = target


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
    # The set both sides' figures above were measured on: None when no holder's figures were
    # compared (no holder, no common set, a holder never evaluated).
    evaluation_set: str | None = None
    # The set the thresholds were checked on, the candidate's figures above: `evaluation_set`
    # when a holder was compared, the candidate's own with no holder, None when the gate judged
    # nothing (a refusal across sets, an unevaluated import). The manifest and size are its.
    thresholds_set: str | None = None
    evaluation_manifest: str | None = None
    examples_per_family: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Comparison:
    """What a promotion compares: the evaluation set chosen and each side's evaluation on it.

    `candidate` is the candidate's evaluation on the set, or its preferred one when there is no
    common set; `holder_sets` every evaluation of the holder (empty: no holder, or one never
    evaluated, such as an import: then there is no common set, and the holder must be scored
    on the candidate's set before the two are compared)."""

    name: str
    version: str
    current: str | None  # the alias's holder now (it may be `version` itself)
    holder: str | None  # the version compared against: `current` unless that is `version`
    evaluation_set: str | None  # the set both have (None: no holder, or no common set)
    judged_on: str | None  # the set the candidate is judged on (with no holder: its preferred)
    candidate: dict[str, Any]
    candidate_sets: dict[str, dict[str, Any]]
    holder_sets: dict[str, dict[str, Any]]
    imported: bool

    @property
    def mismatch(self) -> bool:
        return self.holder is not None and self.evaluation_set is None and not self.imported

    @property
    def holder_metrics(self) -> dict[str, float]:
        if self.evaluation_set is None or self.evaluation_set not in self.holder_sets:
            return {}
        return _floats(self.holder_sets[self.evaluation_set]["metrics"])

    def what(self) -> str:
        """Why the sides cannot be compared: the sets each has."""
        mine = ", ".join(map(describe_set, self.candidate_sets.values())) or "no evaluation"
        theirs = ", ".join(map(describe_set, self.holder_sets.values())) or (
            "no evaluation (never evaluated here, as an import)"
        )
        return (
            f"v{self.version} and v{self.holder} (the alias's holder) were not measured on the "
            f"same evaluation set, so their figures are not compared: v{self.version} has "
            f"{mine}; v{self.holder} has {theirs}"
        )

    def fix(self) -> str:
        """Exactly what to run so that both sides have a common set."""
        target, other = self.candidate, self.holder
        if not target.get("manifest"):  # the candidate's figures predate recorded sets
            target = next((e for e in self.holder_sets.values() if e.get("manifest")), {})
            other = self.version
        if not target.get("manifest"):
            return (
                f"Score v{self.version} and v{self.holder} on one manifest with the evaluate "
                'pipeline (POST /v1/pipelines/evaluate/runs {"params": {"model": '
                f'"{self.name}", "version": "<each>", "manifest": "<key>"}}}}), then promote '
                "again; or promote with force (recorded)."
            )
        params = {"model": self.name, "version": other, "manifest": target["manifest"]}
        params["per_kind"] = target.get("per_kind", 100)
        flags = " ".join(f"--param {k}={v}" for k, v in params.items())
        return (
            f"Score v{other} on set {target['evaluation_set'][:12]} with the evaluate pipeline, "
            f"then promote again: POST /v1/pipelines/evaluate/runs "
            f"{json.dumps({'params': params})} (or `mossctl pipeline run evaluate {flags}`); "
            "or promote with force (recorded)."
        )


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
        evaluations: list[dict[str, Any]] | None = None,
    ) -> str:
        """Register the run's checkpoint artifact as a new version of `name`; returns it.

        `evaluations` (pipelines.evaluate.evaluation_record) are what `metrics` and any other
        figures were measured on; the first is the version's own held-out split. Without them
        the version's set is inferred from `data_digest`, as for versions registered before
        evaluations were recorded."""
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
        if evaluations:
            tags[PRIMARY_SET_TAG] = evaluations[0]["evaluation_set"]
            for evaluation in evaluations:
                tags[EVALUATION_TAG + evaluation["evaluation_set"]] = json.dumps(
                    evaluation, sort_keys=True
                )
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description
        )
        return str(version.version)

    def evaluations(self, name: str, version: str) -> dict[str, dict[str, Any]]:
        """The version's evaluations, by the digest of the set each was measured on."""
        return evaluations_of(self.version_tags(name, version))[0]

    def record_evaluation(self, name: str, version: str, evaluation: dict[str, Any]) -> None:
        """Add (or replace) the version's evaluation on `evaluation["evaluation_set"]`.

        A version with no figures of its own yet (an import) takes it as its listed metrics, and
        from then on the gate judges it like any evaluated version."""
        digest = evaluation["evaluation_set"]
        tags = self.version_tags(name, version)
        value = json.dumps(evaluation, sort_keys=True)
        self.client.set_model_version_tag(name, version, EVALUATION_TAG + digest, value)
        if PRIMARY_SET_TAG not in tags and not json.loads(tags.get("metrics", "{}")):
            self.client.set_model_version_tag(name, version, PRIMARY_SET_TAG, digest)
            metrics = json.dumps(evaluation["metrics"], sort_keys=True)
            self.client.set_model_version_tag(name, version, "metrics", metrics)
            if tags.get("metrics_status") == IMPORTED:
                self.client.set_model_version_tag(name, version, "metrics_status", "evaluated")

    def reference_manifest(self, name: str) -> str | None:
        """The manifest of `name`'s reference evaluation set: MOSS_EVAL_SETS, else the
        registered model's tag `eval_set` (None: no reference set)."""
        from .settings import Settings

        raw = Settings().eval_sets
        if raw and json.loads(raw).get(name):
            return str(json.loads(raw)[name])
        try:
            return self.client.get_registered_model(name).tags.get(REFERENCE_SET_TAG) or None
        except MlflowException:
            return None

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

    def comparison(self, name: str, version: str, alias: str) -> Comparison:
        """The evaluation set a promotion of `version` to `alias` compares on, if any.

        The candidate's sets in order of preference: those on the name's reference manifest,
        then its own held-out split, then the others (newest first); the first the holder was
        also measured on is chosen."""
        tags = self.version_tags(name, version)
        candidate_sets, primary = evaluations_of(tags)
        current = self.alias_holder(name, alias)
        holder = current if current != version else None
        holder_sets = evaluations_of(self.version_tags(name, holder))[0] if holder else {}
        order = preferred_sets(candidate_sets, primary, self.reference_manifest(name))
        # A holder with no evaluation has no set in common: never a pass on thresholds alone.
        common = [d for d in order if d in holder_sets] if holder else order
        chosen = common[0] if common else None
        preferred = order[0] if order else None
        return Comparison(
            name=name,
            version=version,
            current=current,
            holder=holder,
            evaluation_set=chosen if holder else None,
            judged_on=chosen,
            candidate=candidate_sets.get(chosen or preferred or "", {}),
            candidate_sets=candidate_sets,
            holder_sets=holder_sets,
            imported=tags.get("metrics_status") == IMPORTED and not candidate_sets,
        )

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

        Both sides are judged on one evaluation set (`comparison`); with no common set (a
        holder never evaluated included) the promotion is refused (EvaluationSetMismatch) and
        never compared. With no holder, the thresholds alone decide, on the candidate's
        preferred set (the decision's `thresholds_set`). An imported version
        that was never evaluated has no figures to judge: only an explicit (forced) promotion
        moves an alias to it, and the decision says so.
        """
        if alias not in ALIASES:
            raise ValueError(f"alias must be one of {', '.join(ALIASES)}")
        plan = self.comparison(name, version, alias)
        candidate = _floats(plan.candidate.get("metrics", {}))
        if thresholds is None:
            limits = load_thresholds(name).get(alias, {})
        else:
            limits = thresholds_for(thresholds, name).get(alias, {})
        problems: list[str] = []
        skipped: set[str] = set()
        judged = not plan.imported and not plan.mismatch
        if plan.imported:
            problems.append(
                f"v{version} is an imported checkpoint that was not evaluated here; promote it "
                "explicitly (--force, recorded) or run the evaluate pipeline on it first"
            )
            limits = {}
        elif plan.mismatch:
            problems.append(plan.what())
        else:
            holder_metrics = plan.holder_metrics
            problems, skipped = judge(candidate, holder_metrics, limits, tolerance, plan.holder)
        accepted = force or not problems
        judged_on = plan.judged_on if judged else None
        decision = Decision(
            model=name,
            version=version,
            alias=alias,
            accepted=accepted,
            reason=_reason(plan, problems, skipped, actor, force, reason),
            actor=actor,
            at=datetime.now(UTC).isoformat(),
            candidate_metrics=candidate,
            holder=plan.current,
            holder_metrics=plan.holder_metrics,
            thresholds=limits,
            evaluation_set=plan.evaluation_set if judged else None,
            thresholds_set=judged_on,
            evaluation_manifest=plan.candidate.get("manifest") if judged_on else None,
            examples_per_family=dict(plan.candidate.get("examples_per_family") or {})
            if judged_on
            else {},
        )
        self.client.set_model_version_tag(
            name, version, f"decision.{alias}.{_stamp()}", json.dumps(decision.as_dict())
        )
        if not accepted and plan.mismatch:
            raise EvaluationSetMismatch(decision.as_dict(), str(plan.holder), plan.candidate)
        if not accepted:
            raise PromotionRefused(decision.as_dict())
        self._move_alias(name, alias, version)
        return decision

    def rollback(self, name: str, alias: str, actor: str = "") -> str:
        """Move `alias` back to the version that held it before; returns that version.

        `alias` has no default: a slip must not move what every client is served."""
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
                        "evaluation_set": evaluations_of(version.tags)[1],
                        "evaluations": sorted(
                            evaluations_of(version.tags)[0].values(),
                            key=lambda e: e.get("at") or "",
                        ),
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
                    "eval_set": self.reference_manifest(model.name),
                }
            )
        return out


def _stamp() -> str:
    """A tag-safe UTC timestamp (MLflow tag keys allow no `+`)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _reason(
    plan: Comparison, problems: list[str], skipped: set[str], actor: str, force: bool, why: str
) -> str:
    """The decision's reason: what was wrong and how to fix it, or what passed and on what."""
    if plan.imported and force:
        return f"imported checkpoint promoted explicitly by {actor} ({why or 'forced'})"
    if force and problems:
        return f"forced by {actor}, over: " + "; ".join(problems)
    if problems:
        return "; ".join(problems) + (f". {plan.fix()}" if plan.mismatch else "")
    reason = "meets thresholds, no regression"
    if skipped:
        reason += f" (not evaluated, skipped: {', '.join(sorted(skipped))})"
    if plan.evaluation_set:
        reason += f", on evaluation set {describe_set(plan.candidate)}"
    elif plan.judged_on:
        reason += (
            f"; thresholds checked on evaluation set {describe_set(plan.candidate)}, "
            "with no holder to compare against"
        )
    return reason


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def evaluations_of(tags: dict[str, str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """A version's evaluations by set digest, and the digest of its own held-out split.

    A version registered before evaluations were recorded has only `metrics`, which the
    pipelines measured on the held-out split of its training manifest: its set is named by that
    manifest's digest and marked `inferred` (two such versions trained on one manifest compare
    as before; a version scored by today's evaluator never matches one, its digest differs)."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        if key.startswith(EVALUATION_TAG):
            record = json.loads(value)
            found[record["evaluation_set"]] = record
    primary = tags.get(PRIMARY_SET_TAG)
    metrics = json.loads(tags.get("metrics", "{}"))
    if not primary and metrics:
        primary = tags.get("data_digest") or f"unrecorded:{tags.get('run_id', '')}"
        found.setdefault(
            primary,
            {"evaluation_set": primary, "inferred": True, "manifest": None, "metrics": metrics},
        )
    return found, primary


def preferred_sets(
    sets: dict[str, dict[str, Any]], primary: str | None, reference: str | None
) -> list[str]:
    """Set digests in the order the gate tries them: on the reference manifest (newest first),
    the version's own held-out split, then the rest (newest first)."""
    newest = sorted(sets, key=lambda d: sets[d].get("at") or "", reverse=True)
    first = [d for d in newest if reference and sets[d].get("manifest") == reference]
    own = [primary] if primary in sets and primary not in first else []
    return first + own + [d for d in newest if d not in first and d not in own]


def describe_set(evaluation: dict[str, Any]) -> str:
    """`3f2a9c1e0b7d (datasets/x/manifest.jsonl, 487 examples)`, for people."""
    digest = str(evaluation.get("evaluation_set", ""))[:12]
    if evaluation.get("inferred"):
        return f"{digest} (the held-out split of its training manifest, before sets were recorded)"
    examples = evaluation.get("examples")
    return f"{digest} ({evaluation.get('manifest')}, {examples} examples)"


def judge(
    candidate: dict[str, float],
    holder: dict[str, float],
    limits: dict[str, float],
    tolerance: float,
    holder_version: str | None,
) -> tuple[list[str], set[str]]:
    """The gate on one evaluation set: the problems (thresholds missed, regressions against the
    holder's figures on the same set) and the families skipped (not evaluated)."""
    problems: list[str] = []
    applied, skipped = gate_families(limits, candidate)
    if limits and not applied:
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
            problems.append(f"{metric} {value:.4g} {'<' if higher else '>'} threshold {limit:g}")
    for metric, current in holder.items():
        value = candidate.get(metric)
        if metric not in HIGHER_IS_BETTER or value is None:
            continue
        worse = current - value if HIGHER_IS_BETTER[metric] else value - current
        if worse > tolerance * max(1.0, abs(current)):
            problems.append(f"{metric} regresses: {value:.4g} vs {current:.4g} (v{holder_version})")
    return problems, skipped


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
