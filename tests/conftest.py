"""Shared fixtures: a seeded tiny model, the offline processor, and synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config

SAMPLE_RATE = 16_000


def tone(seconds: float, freq: float = 440.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def make_tiny_model(n_window: int | None = 200, seed: int = 0, std: float = 0.2) -> MossAudioModel:
    """A tiny model with weights large enough that greedy choices are far from ties.

    `n_window=None` is the whole-clip opt-out; the default is the released 4 s windows."""
    torch.manual_seed(seed)
    config = preset_config("tiny")
    config.audio_config.n_window = n_window
    model = MossAudioModel(config)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="session")
def processor() -> MossAudioProcessor:
    return MossAudioProcessor.from_pretrained(None)


@pytest.fixture(scope="session")
def tiny_model() -> MossAudioModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def windowed_model() -> MossAudioModel:
    """The released encoder behaviour (4 s windows, n_window = 200), other weights."""
    return make_tiny_model(n_window=200, seed=1)


@pytest.fixture(scope="session")
def whole_clip_model() -> MossAudioModel:
    """The explicit opt-out: every clip encoded as one window."""
    return make_tiny_model(n_window=None, seed=2)
