"""Batched encoding across jobs: concurrent callers share encoder passes, and each gets what
it would have got alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from services.inference.encoding import EncodeBatcher, encode_waveforms


class Gated(torch.nn.Module):
    """The real model, whose first encoder pass waits for `open`: requests pile up behind it
    as they would behind a long clip."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.open = threading.Event()
        self.started = threading.Event()
        self.clips_per_pass: list[int] = []

    def encode_audio(self, mel, lengths):
        self.started.set()
        self.open.wait(30)
        self.clips_per_pass.append(int(lengths.numel()))
        return self.model.encode_audio(mel, lengths)


def clips(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0.5, 9.0, count)  # one to three 4 s windows each
    return [(rng.standard_normal(int(s * 16_000)) * 0.1).astype(np.float32) for s in seconds]


def assert_same(got, expected) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a.token_lengths, b.token_lengths)
        torch.testing.assert_close(a.features, b.features, atol=2e-5, rtol=1e-4)
        for tap_a, tap_b in zip(a.taps, b.taps, strict=True):
            torch.testing.assert_close(tap_a, tap_b, atol=2e-5, rtol=1e-4)


def test_waiting_requests_share_one_pass_and_each_equals_its_clips_alone(windowed_model):
    gated = Gated(windowed_model)
    batcher = EncodeBatcher(gated)
    requests = [clips(1, seed=0)] + [clips(n, seed=n) for n in (1, 2, 3, 1, 2)]
    with ThreadPoolExecutor(len(requests)) as pool:
        first = pool.submit(batcher.encode, requests[0])
        assert gated.started.wait(10)  # the first pass runs; the others arrive meanwhile
        rest = [pool.submit(batcher.encode, r) for r in requests[1:]]
        while batcher._waiting.qsize() < len(rest):
            threading.Event().wait(0.01)
        gated.open.set()
        results = [first.result(30)] + [f.result(30) for f in rest]
    batcher.close()
    assert gated.clips_per_pass == [1, sum(len(r) for r in requests[1:])]
    assert (batcher.passes, batcher.requests) == (2, len(requests))
    for request, got in zip(requests, results, strict=True):
        assert_same(got, [encode_waveforms(windowed_model, [w])[0] for w in request])


def test_a_pass_holds_at_most_the_audio_budget(tiny_model):
    gated = Gated(tiny_model)
    batcher = EncodeBatcher(gated, max_batch_seconds=2.0)
    one_second = [np.full(16_000, 0.01, np.float32)]
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.encode, one_second)
        assert gated.started.wait(10)
        rest = [pool.submit(batcher.encode, one_second) for _ in range(5)]
        while batcher._waiting.qsize() < len(rest):
            threading.Event().wait(0.01)
        gated.open.set()
        for future in [first, *rest]:
            future.result(30)
        long = batcher.encode([np.zeros(3 * 16_000, np.float32)])  # over budget: alone
    batcher.close()
    assert gated.clips_per_pass == [1, 2, 2, 1, 1]
    assert int(long[0].token_lengths) == 38  # 3 s at 12.5 tokens/s, rounded up by the stem


def test_a_bad_clip_fails_only_its_own_request(tiny_model):
    gated = Gated(tiny_model)
    batcher = EncodeBatcher(gated)
    good = clips(2, seed=5)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.encode, good[:1])
        assert gated.started.wait(10)
        bad = pool.submit(batcher.encode, [np.zeros((2, 1_600), np.float32)])  # not mono
        fine = pool.submit(batcher.encode, good[1:])
        while batcher._waiting.qsize() < 2:
            threading.Event().wait(0.01)
        gated.open.set()
        first.result(30)
        with pytest.raises(ValueError, match="mono"):
            bad.result(30)
        assert_same(fine.result(30), encode_waveforms(tiny_model, good[1:]))
    batcher.close()
