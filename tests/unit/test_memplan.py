"""The memory plan's arithmetic (pipelines/memplan.py), checked against the real model.

Parameter and trainable counts are compared with the model itself (built on the meta device,
made trainable by the trainer's own configure_trainable and LoRA); the activation count with
the bytes autograd actually keeps for a tiny forward (saved-tensor hooks). How the whole plan
compares with measured peak memory is benchmarks/train.py's job (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch

from model import MossAudioModel, preset_config
from model.tokens import AUDIO_TOKEN_ID
from pipelines import memplan
from pipelines.memplan import GIB, USABLE, gpus_needed, plan, table
from pipelines.train import TrainConfig, configure_trainable


def _model(size: str, device: str = "meta") -> MossAudioModel:
    torch.manual_seed(0)
    with torch.device(device):
        return MossAudioModel(preset_config(size))


@pytest.mark.parametrize("size", ["tiny", "small", "4b"])
def test_parameter_counts_are_the_models(size):
    model = _model(size)
    assert plan(size, "full", 1, 64, 1, False).parameters == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.parametrize(
    ("stage", "decoder", "train_encoder"),
    [("sft", "full", False), ("sft", "lora", False), ("pretrain", "full", True)],
)
def test_trainable_counts_are_what_the_trainer_trains(stage, decoder, train_encoder):
    model = _model("tiny")
    config = TrainConfig(stage=stage, decoder=decoder, lora_rank=8)
    trains = sum(p.numel() for p in configure_trainable(model, config))
    counted = plan("tiny", decoder, 1, 64, 1, False, train_encoder=train_encoder, lora_rank=8)
    assert counted.trainable == trains
    # with LoRA the adapters are parameters too (the frozen base is unchanged)
    assert counted.parameters == sum(p.numel() for p in model.parameters())


def test_lora_trains_the_adapters_and_the_audio_head_only():
    counts = memplan.count_parameters("8b", lora_rank=16)
    lora = plan("8b", "lora", 1, 512, 1, True, lora_rank=16)
    shape = counts.shape
    h, q, kv, f = shape["hidden"], shape["q"], shape["kv"], shape["ffn"]
    per_layer = 16 * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + f) + (f + h))
    assert counts.lora_layer == per_layer
    assert lora.trainable == counts.audio_head + counts.layers * per_layer
    assert lora.trainable < 0.03 * lora.parameters
    assert plan("8b", "full", 1, 512, 1, True).trainable == counts.total - counts.encoder


@pytest.mark.parametrize("decoder", ["full", "lora"])
def test_sharding_divides_weights_gradients_and_optimizer_by_the_world_size(decoder):
    one = plan("4b", decoder, 1, 2048, 1, True, sharded=True)
    for world in (2, 8, 16):
        many = plan("4b", decoder, world, 2048, 1, True)
        assert many.weights == 4 * one.parameters // world
        assert many.gradients == 4 * one.trainable // world
        assert many.optimizer == 8 * one.trainable // world  # AdamW: two fp32 moments
        # each rank runs its own micro-batch: activations and gathered units do not shrink
        assert (many.activations, many.gathered) == (one.activations, one.gathered)
        assert many.total < one.total


def test_one_process_holds_no_fsdp_units():
    plain, sharded = (
        plan("small", "full", 1, 512, 2, False, precision="fp32"),
        plan("small", "full", 1, 512, 2, False, precision="fp32", sharded=True),
    )
    assert not plain.sharded and sharded.sharded and plan("small", "full", 2, 512, 1, False).sharded
    assert plain.gathered == plain.root == plain.collectives == 0  # fp32: no autocast copies
    assert sharded.gathered > sharded.root > 0
    # bf16 in one process: autocast's copies of the decoder, head and adapter weights
    counts = memplan.count_parameters("small")
    bf16 = plan("small", "full", 1, 512, 2, False)
    decoder = counts.layer * counts.layers + counts.lm_head + counts.audio_head
    assert bf16.gathered == 2 * decoder


@pytest.mark.parametrize("size", ["tiny", "small", "4b", "8b"])
@pytest.mark.parametrize("decoder", ["full", "lora"])
def test_checkpointing_lowers_activations(size, decoder):
    without = plan(size, decoder, 8, 2048, 2, False)
    with_ = plan(size, decoder, 8, 2048, 2, True)
    assert with_.activations == with_.activations_checkpointed < without.activations_full
    assert without.activations == without.activations_full == with_.activations_full
    assert with_.total <= without.total
    if size in ("4b", "8b"):  # 36 layers: each keeps its input, one is recomputed at a time
        assert with_.activations_checkpointed < 0.2 * without.activations_full


def test_activations_grow_with_tokens_and_the_head_with_answer_tokens():
    base = plan("4b", "full", 8, 1024, 1, False)
    double = plan("4b", "full", 8, 1024, 2, False)
    assert 1.9 < double.activations / base.activations <= 2.1
    more_answers = plan("4b", "full", 8, 1024, 1, False, answer_tokens=512)
    vocab = memplan.count_parameters("4b").shape["vocab"]
    # the head: fp32 log-probabilities, two fp32 gradients and the bf16 logits' gradient
    grown = more_answers.activations - base.activations
    assert grown == 256 * (vocab * (4 + 4 + 4 + 2) + 2560 * 2)


def test_the_activation_count_matches_what_autograd_keeps():
    """Every tensor a tiny fp32 training forward saves for backward (unique storages, not the
    parameters), against the plan's activations less the head's two backward gradients."""
    model = _model("tiny", "cpu")
    configure_trainable(model, TrainConfig(stage="sft", decoder="full"))
    model.train()
    seq, batch, audio, answers = 256, 2, 128, 64
    prompt = seq - audio - answers
    ids = torch.tensor(
        [[1000 + i for i in range(prompt)] + [AUDIO_TOKEN_ID] * audio + list(range(2000, 2064))]
        * batch
    )
    labels = ids.clone()
    labels[:, : prompt + audio] = -100
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    mel = torch.randn(batch, 128, 8 * audio)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=labels, audio_data=mel,
              audio_data_seqlens=torch.full((batch,), 8 * audio))  # fmt: skip
    planned = plan("tiny", "full", 1, seq, batch, False, precision="fp32")
    vocab = memplan.count_parameters("tiny").shape["vocab"]
    transient = 2 * 4 * batch * answers * vocab  # held during the head's backward only
    expected = planned.activations - transient
    assert 0.85 < sum(saved.values()) / expected < 1.15, (sum(saved.values()), expected)


def test_gpus_needed_is_the_smallest_world_that_fits():
    need = gpus_needed("8b", "full", 2048, 1, True)
    assert need is not None and need > 1
    assert plan("8b", "full", need, 2048, 1, True).fits()
    assert not plan("8b", "full", need - 1, 2048, 1, True).fits()
    assert gpus_needed("8b", "lora", 2048, 1, True) == 1
    # activations alone over the GPU: no world size helps
    assert gpus_needed("8b", "full", 32768, 8, False, most=64) is None
    small_gpu = gpus_needed("4b", "full", 2048, 1, True, gpu_gib=24)
    assert small_gpu is not None and small_gpu > need // 2
    assert plan("4b", "full", small_gpu, 2048, 1, True).total <= USABLE * 24 * GIB


def test_the_table_rows_agree_with_the_plans():
    text = table()
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [
        ("4b", "full"), ("4b", "lora"), ("8b", "full"), ("8b", "lora")
    ]  # fmt: skip
    for cells in rows:
        size, decoder = cells[0].strip("| "), cells[1]
        for world, cell in zip((1, 8, 16), cells[4:7], strict=True):
            one = plan(size, decoder, world, 2048, 1, True)
            assert cell.startswith(f"{one.total / GIB:.1f}")
            assert cell.endswith("(no)") == (not one.fits())
        assert cells[7].strip(" |") == str(gpus_needed(size, decoder, 2048, 1, True))


def test_the_breakdown_names_the_peak_moment_and_bad_input_is_refused():
    text = memplan.breakdown(plan("8b", "full", 16, 2048, 1, True))
    assert "world size 16 (FSDP2)" in text and "peak per GPU (with checkpointing)" in text
    assert "(at the " in text.splitlines()[-1]
    for bad, message in (
        ({"decoder": "qlora"}, "decoder must be full or lora"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"world_size": 0}, "at least 1"),
    ):
        args = {"size": "tiny", "decoder": "full", "world_size": 1, "seq_len": 64,
                "micro_batch": 1, "checkpointing": False, **bad}  # fmt: skip
        with pytest.raises(ValueError, match=message):
            plan(**args)
    with pytest.raises(ValueError, match="unknown preset"):
        plan("13b", "full", 1, 64, 1, False)
