"""Which dtype the workers run a checkpoint in (MOSS_DTYPE), whatever dtype it was saved in."""

from __future__ import annotations

import pytest
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from services.core.modelref import ModelSpec
from services.inference.models import ModelCache, torch_dtype


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """Saved in bfloat16, as the released checkpoints are."""
    path = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    MossAudioModel(preset_config("tiny")).to(torch.bfloat16).save_pretrained(path)
    MossAudioProcessor.from_pretrained(None).save_pretrained(path)
    return ModelSpec("tiny", None, path)


def test_auto_runs_a_bf16_checkpoint_in_float32_on_the_cpu(bf16_checkpoint) -> None:
    loaded = ModelCache("cpu").get(bf16_checkpoint)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_an_explicit_dtype_is_kept(bf16_checkpoint) -> None:
    loaded = ModelCache("cpu", dtype="bfloat16").get(bf16_checkpoint)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_auto_is_bfloat16_on_cuda() -> None:
    assert torch_dtype("auto", "cuda:1") is torch.bfloat16
    assert torch_dtype("auto", "cpu") is torch.float32
    assert torch_dtype("float16", "cuda") is torch.float16
