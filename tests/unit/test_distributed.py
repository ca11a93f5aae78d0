"""`mossctl train` under torchrun: 2 processes (gloo, FSDP2) train what 1 process trains.

Every multi-process run here is real torchrun through the real launcher (the CLI where it
matters), on the tiny preset with a few steps. The 1-process reference runs in this process.
The base checkpoint has no dropout: dropout draws per-rank random masks, the one thing that
legitimately differs between world sizes. Gradient norms are compared as well as losses:
AdamW and clipping hide a constant gradient factor from the weights, so the gloo AVG trap
(pytorch#162338: gradients summed instead of averaged) shows only in the norms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.hub import check_layout, weight_files
from pipelines.data import generate_dataset
from pipelines.dcp import STATE_FILE, export_release
from pipelines.distributed import Dist
from pipelines.distributed_run import Extras, launch, run, torchrun_argv
from pipelines.importer import expected_tensor_names
from pipelines.train import Examples, TrainConfig, configure_trainable
from pipelines.trainjob import TrainSpec
from services.cli import app
from services.core.storage import LocalStorage

STEPS = 4
STOP = 2  # where the interrupted legs stop


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    key, _ = generate_dataset(LocalStorage(root / "store"), "d", 6, seed=3, heldout_share=0.0)
    config = preset_config("tiny")
    config.audio_config.dropout = config.audio_config.attention_dropout = 0.0
    torch.manual_seed(0)
    MossAudioModel(config).save_pretrained(root / "base")
    return {"root": root, "manifest": root / "store" / key, "base": root / "base"}


def spec(data, output: Path, **change) -> TrainSpec:
    base = TrainSpec(manifest=str(data["manifest"]), output=str(output), base=str(data["base"]),
                     steps=STEPS, batch_size=4, lr=2e-3, freeze_encoder=False)  # fmt: skip
    return replace(base, **change)


@pytest.fixture(scope="module")
def reference(data) -> dict:
    """One process, uninterrupted: what every other world size must reproduce."""
    return run(spec(data, data["root"] / "reference"), Dist())


def weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        tensors.update(load_file(file))
    return tensors


def assert_same_run(got: dict, expected: dict, first: int = 1) -> None:
    """Per-step losses within 1e-3 relative, and gradient norms too (the AVG trap)."""
    offset = first - expected["first_step"]
    want = expected["losses"][offset : offset + len(got["losses"])]
    norms = expected["grad_norms"][offset : offset + len(got["grad_norms"])]
    assert len(got["losses"]) == len(want) > 0
    for a, b in zip(got["losses"], want, strict=True):
        assert abs(a - b) / abs(b) <= 1e-3, (got["losses"], want)
    for a, b in zip(got["grad_norms"], norms, strict=True):
        assert abs(a - b) / abs(b) <= 1e-3, (got["grad_norms"], norms)


def assert_same_weights(directory: Path, expected: Path, base: Path) -> None:
    """Equal up to 2 % of what training moved each tensor. Summation order differs between
    world sizes (~1e-7), and AdamW divides by the root of the squared gradient, so an element
    whose gradient is ~0 can take a visibly different step (seen: one element at 1 % of the
    update); a frozen tensor must come out bit for bit."""
    got, want, start = weights(directory), weights(expected), weights(base)
    assert set(got) == set(want)
    for name, tensor in want.items():
        moved = float((tensor - start[name]).abs().max())
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0.02 * moved, msg=name)


def mossctl(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "services.cli", "train", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {})})  # fmt: skip


def cli_args(data, output: Path, *extra: str) -> list[str]:
    return [str(data["manifest"]), "--output", str(output), "--base", str(data["base"]),
            "--steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--train-encoder",
            *extra]  # fmt: skip


def test_two_processes_train_what_one_does_and_infer_reads_it(data, reference, tmp_path):
    done = mossctl(*cli_args(data, tmp_path / "two", "--nproc-per-node", "2", "--json"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # the last line is the result
    assert result["world_size"] == 2 and result["steps"] == STEPS
    assert len(result["peak_memory_bytes"]) == 2 and min(result["peak_memory_bytes"]) > 0
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] > result["samples_per_s"]
    assert_same_run(result, reference)
    assert_same_weights(tmp_path / "two", data["root"] / "reference", data["base"])
    out = tmp_path / "two"
    assert check_layout(out, expected_tensor_names(out)) == []
    assert (out / STATE_FILE).is_file()
    clip = next((data["manifest"].parent / "clips").glob("*.wav"))
    shown = CliRunner().invoke(app, ["infer", str(clip), "--model", str(out), "--json",
                                     "--max-new-tokens", "4"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "text" in json.loads(shown.stdout[shown.stdout.index("{") :])


def test_a_run_stopped_at_two_processes_resumes_at_one_and_back(data, reference, tmp_path):
    # 2 -> 1: the first leg under torchrun, the second in this process.
    first = launch(spec(data, tmp_path / "a", nproc_per_node=2), Extras(stop_after=STOP))
    assert first["steps"] == STOP
    assert_same_run(first, reference)
    second = run(spec(data, tmp_path / "a1", resume=str(tmp_path / "a")), Dist())
    assert second["first_step"] == STOP + 1 and second["steps"] == STEPS
    assert_same_run(second, reference, first=STOP + 1)
    assert_same_weights(tmp_path / "a1", data["root"] / "reference", data["base"])
    # 1 -> 2: the first leg here, the second through the CLI at 2 processes.
    run(spec(data, tmp_path / "b"), Dist(), Extras(stop_after=STOP))
    done = mossctl(*cli_args(data, tmp_path / "b2", "--resume", str(tmp_path / "b"),
                             "--nproc-per-node", "2", "--json"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(json.loads(done.stdout.splitlines()[-1]), reference, first=STOP + 1)
    assert_same_weights(tmp_path / "b2", data["root"] / "reference", data["base"])


def test_lora_under_two_processes_with_activation_checkpointing(data, tmp_path):
    one = run(spec(data, tmp_path / "one", decoder="lora"), Dist())
    done = mossctl(*cli_args(data, tmp_path / "two", "--decoder", "lora", "--nproc-per-node", "2",
                             "--activation-checkpointing", "--json"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(json.loads(done.stdout.splitlines()[-1]), one)
    assert_same_weights(tmp_path / "two", tmp_path / "one", data["base"])
    released = weights(tmp_path / "two")
    assert not [name for name in released if "lora" in name or ".base." in name]
    q = "language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(released[q], weights(data["base"])[q])  # the adapters were merged in


def test_a_failing_rank_fails_the_run_with_its_message(data, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    def broken(self, *args, **kwargs):\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    torch.optim.AdamW.step = broken\n"
    )
    done = mossctl(*cli_args(data, tmp_path / "out", "--nproc-per-node", "2"),
                   env={"PYTHONPATH": str(hook)})  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: rank 1 failed: RuntimeError: injected failure on rank 1", last


def test_recomputed_layers_inject_the_same_deepstack_features(data):
    """Activation checkpointing recomputes each decoder layer in backward; DeepStack adds the
    mergers' features between layers. Loss and every gradient (the mergers' included) must be
    the same with and without it."""
    processor = MossAudioProcessor.from_pretrained(None)
    storage = LocalStorage(data["root"] / "store")
    from pipelines.data import read_manifest

    clips, _ = read_manifest(storage, "datasets/d/manifest.jsonl")
    examples = Examples(clips[:2], storage.get_bytes, processor, ("caption", "count"), "train")
    batch = examples.batch(examples.items[:2])
    grads = []
    for checkpointing in (False, True):
        model = MossAudioModel.from_pretrained(data["base"]).train()
        config = TrainConfig(
            stage="sft", train_encoder=True, activation_checkpointing=checkpointing
        )
        configure_trainable(model, config)
        if checkpointing:
            from pipelines.distributed import checkpoint_layers

            checkpoint_layers(model)
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()
                                      if p.grad is not None}))  # fmt: skip
    (plain_loss, plain), (ckpt_loss, ckpt) = grads
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=0)
    assert set(plain) == set(ckpt)
    merger = "deepstack_audio_merger_list.0.gate_proj.weight"
    assert plain[merger].abs().sum() > 0
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_release_is_written_one_shard_at_a_time_in_the_hub_layout(data, tmp_path):
    model = MossAudioModel.from_pretrained(data["base"])
    processor = MossAudioProcessor.from_pretrained(None)
    model.save_pretrained(tmp_path / "hf")
    files = export_release(tmp_path / "ours", model, processor, Dist(), shard_bytes=20 * 1024**2)
    assert len(files) > 1 and (tmp_path / "ours" / "model.safetensors.index.json").is_file()
    assert check_layout(tmp_path / "ours", expected_tensor_names(tmp_path / "hf")) == []
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config == json.loads((tmp_path / "hf" / "config.json").read_text())
    loaded = MossAudioModel.from_pretrained(tmp_path / "ours")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_bad_flags_end_with_one_line():
    runner = CliRunner()
    for args, message in (
        (["m.jsonl", "--output", "o", "--nproc-per-node", "2", "--batch-size", "3"],
         "not a multiple of the world size"),
        (["m.jsonl", "--output", "o", "--decoder", "frozen"], "--decoder must be one of"),
        (["missing.jsonl", "--output", "o"], "no such manifest file"),
        (["m.jsonl"], "give MANIFEST and --output"),
    ):  # fmt: skip
        done = runner.invoke(app, ["train", *args])
        assert done.exit_code == 2, done.output
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr


def test_several_nodes_take_their_rendezvous_from_kubeflow(tmp_path):
    one = TrainSpec(manifest="m", output="o", nodes=2, nproc_per_node=4, batch_size=8)
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "moss-node-0-0.moss",
           "PET_MASTER_PORT": "29400"}  # fmt: skip
    argv = torchrun_argv(one, tmp_path, env)
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--master-addr") + 1] == "moss-node-0-0.moss"
    assert "--standalone" not in argv and argv[-3:] == [
        "-m",
        "pipelines.distributed_run",
        str(tmp_path),
    ]
    assert "--standalone" in torchrun_argv(replace(one, nodes=1), tmp_path, {})
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        torchrun_argv(one, tmp_path, {"PET_NODE_RANK": "0"})
    with pytest.raises(ValueError, match="PET_NNODES=3"):
        torchrun_argv(one, tmp_path, {**env, "PET_NNODES": "3"})
