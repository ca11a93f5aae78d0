"""The shared core's rules: the job state machine and the one model reference parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.jobstate import (
    ACTIVE,
    COMPLETES_TO,
    FINAL,
    NEXT_TASK,
    WAITING_FOR,
    Stage,
    Status,
    advance,
)
from services.core.modelref import ModelNotFound, check, parse, resolve
from services.core.settings import Settings


class Store:
    def __init__(self, accept: bool) -> None:
        self.accept, self.completed = accept, []

    def complete_stage(self, job_id: str, stage: str, **values) -> bool:
        self.completed.append((job_id, stage, values))
        return self.accept


def test_the_stages_form_one_path_from_queued_to_done() -> None:
    stage, path = Stage.QUEUED, [Stage.QUEUED]
    for task in (Stage.ENCODE, Stage.GENERATE):
        assert WAITING_FOR[task] == stage  # each task is claimed where the last one left it
        stage = COMPLETES_TO[task]
        path.append(stage)
    assert path == [Stage.QUEUED, Stage.ENCODED, Stage.DONE]
    assert NEXT_TASK[Stage.ENCODE] == Stage.GENERATE and NEXT_TASK[Stage.GENERATE] is None
    assert set(ACTIVE) | set(FINAL) == set(Status) and not set(ACTIVE) & set(FINAL)
    assert Status.QUEUED == "queued" and Stage.ENCODE == "encode"  # stored as plain strings


def test_advance_enqueues_what_comes_next_only_when_the_stage_was_completed() -> None:
    sent: list[tuple[str, str]] = []
    store = Store(accept=True)
    assert advance(store, lambda s, j: sent.append((s, j)), "j1", "encode", features_key="k")
    assert store.completed == [("j1", "encode", {"features_key": "k"})]
    assert sent == [("generate", "j1")]
    assert advance(store, lambda s, j: sent.append((s, j)), "j1", "generate", result={})
    assert sent == [("generate", "j1")]  # nothing after the last stage
    refused = Store(accept=False)  # cancelled meanwhile, or a duplicate delivery
    assert not advance(refused, lambda s, j: sent.append((s, j)), "j2", "encode")
    assert sent == [("generate", "j1")]


@pytest.mark.parametrize(
    ("ref", "name", "alias", "version", "registry"),
    [
        ("tiny", "tiny", None, None, False),
        ("tiny@staging", "tiny", "staging", None, False),
        (
            "models:/moss-audio-4b-instruct@production",
            "moss-audio-4b-instruct",
            "production",
            None,
            True,
        ),
        ("models:/moss-audio-4b-instruct/7", "moss-audio-4b-instruct", None, "7", True),
    ],
)
def test_every_reference_form_parses(ref, name, alias, version, registry) -> None:
    parsed = parse(ref)
    assert (parsed.name, parsed.alias, parsed.version, parsed.registry) == (
        name,
        alias,
        version,
        registry,
    )
    assert str(parsed) == ref  # canonical form round-trips


@pytest.mark.parametrize(
    "ref", ["", "../etc", "a b", "models:/x", "models:/x/latest", "models:/@a", "x@a@b"]
)
def test_bad_references_say_which_forms_exist(ref) -> None:
    with pytest.raises(ValueError, match="invalid model reference"):
        parse(ref)


def test_directories_only_where_allowed(tmp_path) -> None:
    """A job names models; only predictors, the CLI and pipelines may name a directory."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        parse(str(tmp_path / "ckpt"))
    settings = Settings(home=tmp_path / "home")
    spec = resolve(str(tmp_path / "ckpt"), settings, allow_paths=True)
    assert spec.path == tmp_path / "ckpt" and spec.name == "ckpt"
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        resolve(str(tmp_path), settings, allow_paths=True)


def test_local_names_resolve_and_unknown_ones_fail_without_a_registry(tmp_path) -> None:
    models = tmp_path / "home" / "models" / "tiny"
    models.mkdir(parents=True)
    (models / "config.json").write_text("{}")
    settings = Settings(home=tmp_path / "home")
    assert check("tiny@staging", settings) == "tiny@staging"  # a directory answers any alias
    assert resolve("tiny", settings).path == models
    assert Path(resolve(None, settings.model_copy(update={"default_model": "tiny"})).path) == models
    with pytest.raises(ModelNotFound, match="unknown model"):
        check("other", settings)
    with pytest.raises(ModelNotFound, match="unknown model"):
        resolve("models:/other@production", settings)


def test_the_first_runs_training_log_reads_as_progress(tmp_path) -> None:
    from services.core.bootstrap import describe, parse_log, read_status, write_status

    assert parse_log("generating clips") == {"phase": "preparing data"}
    log = "    step 50/200 loss 1.234\n    step 100/200 loss 0.987\n"
    assert parse_log(log) == {"phase": "training", "step": 100, "steps": 200, "loss": 0.987}
    done = parse_log(log + "    evaluating on the held-out split\n    evaluation: count 0.5\n")
    assert done["phase"] == "registering" and done["evaluation"] == "count 0.5"
    status = {"state": "training", "model": "m", **parse_log(log), "eta_s": 90.0}
    assert describe(status) == "training m: step 100/200, loss 0.987, about 2 min left"
    assert read_status(tmp_path) is None
    write_status(tmp_path, status)
    assert read_status(tmp_path) == status
    write_status(tmp_path, {**status, "state": "done"})
    assert read_status(tmp_path) is None
