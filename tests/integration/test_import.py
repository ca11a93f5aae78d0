"""`mossctl models import`: a hub-layout checkpoint into a real MLflow registry, then served.

The hub itself cannot be reached from here; a local huggingface_hub cache in hub layout
(models--ORG--NAME/snapshots/COMMIT + refs/main) stands in for it, read by the real
`snapshot_download` with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.jobstore import Principal
from services.core.registry import PromotionRefused, Registry
from services.jobs.stages import encode_job, generate_job
from services.jobs.submit import submit_job
from tests.audio_files import encode, stereo_tone
from tests.hub_layout import write_hub_checkpoint, write_hub_tokenizer
from tests.jobs_env import make_context

pytestmark = pytest.mark.integration
MOSSCTL = str(Path(sys.executable).with_name("mossctl"))
REPO = "OpenMOSS-Team/MOSS-Audio-tiny-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / f"models--{REPO.replace('/', '--')}"
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    write_hub_tokenizer(tokenizer)
    write_hub_checkpoint(repo / "snapshots" / COMMIT, tokenizer_from=tokenizer)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def mossctl(args: list[str], mlflow_uri: str, hub_cache: Path, home: Path):
    env = {
        **os.environ,
        "MOSS_MLFLOW_URI": mlflow_uri,
        "MOSS_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run([MOSSCTL, *args], env=env, capture_output=True, text=True, timeout=300)


def test_import_a_hub_repo_register_it_and_serve_it(mlflow_uri, hub_cache, tmp_path) -> None:
    name = "moss-audio-tiny-imported"
    done = mossctl(
        ["models", "import", REPO, "--name", name, "--alias", "production"],
        mlflow_uri,
        hub_cache,
        tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert f"registered {name} v1 from {REPO} ({COMMIT})" in done.stdout

    registry = Registry(mlflow_uri)
    assert registry.alias_holder(name, "production") == "1"
    tags = registry.version_tags(name, "1")
    assert tags["metrics_status"] == "imported" and tags["source"] == REPO
    assert tags["revision"] == COMMIT and "speech" in tags["trained_for"]
    decisions = [json.loads(v) for k, v in tags.items() if k.startswith("decision.production")]
    assert decisions and "promoted explicitly" in decisions[0]["reason"]

    # Lineage: the SHA-256 of every file, and the checkpoint digest over them.
    run = registry.client.get_run(tags["run_id"])
    manifest_path = registry.client.download_artifacts(run.info.run_id, "import-manifest.json")
    files = json.loads(Path(manifest_path).read_text())["files"]
    snapshot = hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (
        files["model-00002-of-00002.safetensors"]
        == hashlib.sha256((snapshot / "model-00002-of-00002.safetensors").read_bytes()).hexdigest()
    )
    assert "modeling_moss_audio.py" in files and "config.json" in files
    listing = "".join(f"{d}  {p}\n" for p, d in files.items()).encode()
    assert run.data.tags["checkpoint_sha256"] == hashlib.sha256(listing).hexdigest()

    # Workers serve it by name@alias, and the result says who answered.
    ctx = make_context(tmp_path / "serve", mlflow_uri=mlflow_uri, default_model=name)
    data = encode(*stereo_tone(1.5), 44_100, "wav")
    job = submit_job(
        ctx,
        Principal("k", "acme", ("jobs",)),
        io.BytesIO(data),
        len(data),
        "caption",
        None,
        f"{name}@production",
        4,
        0.0,
    )
    assert encode_job(ctx, job.id) and generate_job(ctx, job.id)
    result = ctx.store.get_job(job.id).result
    assert result["model"]["registry_version"] == "1" and result["model"]["source"] == REPO
    assert "speech" in result["model"]["trained_for"]

    # The same files again (from the snapshot directory this time): the version already there.
    again = mossctl(["models", "import", str(snapshot), "--name", name], mlflow_uri, hub_cache,
                    tmp_path / "home")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{name} v1 already holds these files" in again.stdout
    # Other weights are a new version, and the gate will not move an alias to it on its own.
    other = tmp_path / "other"
    write_hub_checkpoint(other, seed=8, tokenizer_from=snapshot)
    second = mossctl(["models", "import", str(other), "--name", name], mlflow_uri, hub_cache,
                     tmp_path / "home")  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "not serving yet" in second.stdout
    with pytest.raises(PromotionRefused, match="imported checkpoint that was not evaluated"):
        registry.promote(name, "2", "production", "ops")
    assert registry.alias_holder(name, "production") == "1"


def test_a_broken_checkpoint_is_refused_in_one_line_and_nothing_is_registered(
    mlflow_uri, hub_cache, tmp_path
) -> None:
    snapshot = hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in snapshot.iterdir():
        if item.name != "model-00001-of-00002.safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    done = mossctl(
        ["models", "import", str(broken), "--name", "broken-import"],
        mlflow_uri,
        hub_cache,
        tmp_path / "home",
    )
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "not a usable checkpoint" in line and "model-00001-of-00002.safetensors" in line
    assert all(m["name"] != "broken-import" for m in Registry(mlflow_uri).models())

    missing = mossctl(
        ["models", "import", "OpenMOSS-Team/not-there", "--name", "x"],
        mlflow_uri,
        hub_cache,
        tmp_path / "home",
    )
    assert missing.returncode == 2 and "not in the hub cache" in missing.stderr


def test_the_import_step_downloads_a_hub_repo_and_reports_progress(
    mlflow_uri, hub_cache, monkeypatch, capsys
) -> None:
    """The `import` pipeline's step (what POST /v1/registry/models/import queues) on a hub id:
    never a local path, and every phase as a MOSS_PROGRESS line, the result last."""
    from pipelines.importer import ImportRefused, run_import
    from services.core import progress
    from services.core.settings import get_settings

    monkeypatch.setenv("MOSS_MLFLOW_URI", mlflow_uri)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    try:
        imported = run_import("moss-audio-tiny-step", hub_id=REPO, alias="candidate", actor="t")
        lines = [progress.parse(line) for line in capsys.readouterr().out.splitlines()]
        with pytest.raises(ImportRefused, match=r"import_failed: .*not in the hub cache"):
            run_import("moss-audio-tiny-step", hub_id="OpenMOSS-Team/not-there")
    finally:
        get_settings.cache_clear()
    assert imported.revision == COMMIT and imported.source == REPO and not imported.existing
    lines = [fields for fields in lines if fields]
    assert all(fields["pipeline_step"] == "import" for fields in lines)
    phases = [fields["message"].split(":")[0] for fields in lines[:-1]]
    assert phases[0] == "download" and "layout check" in phases and phases[-1] == "register"
    counted = [f for f in lines if f["message"].startswith("register: uploading")]
    assert counted[-1]["step"] == counted[-1]["total_steps"] == len(imported.files)
    assert lines[-1] | {"message": ""} == {
        "pipeline_step": "import", "message": "", "model": "moss-audio-tiny-step",
        "version": imported.version, "mlflow_run_id": imported.run_id,
    }  # fmt: skip
    assert Registry(mlflow_uri).alias_holder("moss-audio-tiny-step", "candidate") == "1"
