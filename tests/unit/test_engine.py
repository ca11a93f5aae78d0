"""The continuous-batching engine: requests join and leave between steps, and each one gets the
tokens it would get alone (greedy and seeded sampling), whatever shares the batch."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch

from model.tokens import STOP_TOKEN_IDS
from services.inference.engine import BatchingEngine, GenerationRequest
from tests.conftest import noise


def make_requests(processor, model, count: int, seed: int = 0) -> list[GenerationRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        inputs = processor(text=f"Question {i}?", audios=[noise(0.5 + rng.random() * 3, seed=i)])
        with torch.no_grad():
            audio = model.project_audio(
                model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
            )
        sampled = i % 3 == 2  # every third request samples, with its own seed
        out.append(
            GenerationRequest(
                inputs["input_ids"][0].tolist(),
                audio,
                max_new_tokens=rng.randint(1, 24),
                temperature=0.8 if sampled else 0.0,
                top_p=0.9 if sampled else 1.0,
                top_k=20 if sampled else 0,
                seed=100 + i if sampled else None,
            )
        )
    return out


def alone(model, request: GenerationRequest) -> list[int]:
    """The reference: plain model.generate, batch 1, same settings."""
    params = request.sampling()
    new = model.generate(
        torch.tensor([request.prompt_ids]),
        audio_embeddings=request.audio,
        max_new_tokens=params.max_new_tokens,
        do_sample=params.do_sample,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
    )[0, len(request.prompt_ids) :].tolist()
    for n, token in enumerate(new):  # generate pads finished rows; the engine stops
        if token in STOP_TOKEN_IDS:
            return new[: n + 1]
    return new


def test_requests_arriving_at_random_steps_match_each_alone(processor, tiny_model) -> None:
    requests = make_requests(processor, tiny_model, 9)
    expected = [alone(tiny_model, r) for r in requests]
    engine = BatchingEngine(tiny_model, max_batch=4)
    rng = random.Random(1)
    handles: list = [None] * len(requests)

    def client(i: int) -> None:
        time.sleep(rng.random() * 0.3)  # arrive while others are mid-way
        handles[i] = engine.submit(requests[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [h.result(60) for h in handles]
    engine.close()
    assert results == expected
    # Fewer decode steps than the requests' tokens: rows shared steps.
    assert engine.steps_run < sum(len(r) for r in results)


def test_cancel_frees_the_slot_for_a_waiting_request(processor, tiny_model) -> None:
    long, short = make_requests(processor, tiny_model, 2, seed=3)
    long = GenerationRequest(long.prompt_ids, long.audio, max_new_tokens=2000)
    engine = BatchingEngine(tiny_model, max_batch=1)
    assert engine.slots == 1
    running = engine.submit(long)
    while len(running.tokens) < 3:
        time.sleep(0.005)
    waiting = engine.submit(short)
    time.sleep(0.05)
    assert not waiting.done  # the only slot is taken
    running.cancel()
    assert waiting.result(30) == alone(tiny_model, short)
    assert running.done and len(running.tokens) < 2000
    engine.close()


def test_the_kv_budget_sets_the_slots_and_is_reported(tiny_model) -> None:
    per_token = 2 * 4 * 2 * 16 * 4  # tiny: 4 layers, 2 kv heads, head_dim 16, float32
    engine = BatchingEngine(
        tiny_model, max_batch=64, kv_budget_bytes=3 * 512 * per_token, slot_tokens=512
    )
    assert engine.memory == {
        "kv_budget_bytes": 3 * 512 * per_token,
        "kv_cache_bytes": 3 * 512 * per_token,
        "slots": 3,
        "slot_tokens": 512,
        "prefix_cache_bytes": 256 << 20,
    }
    engine.close()


def test_a_request_longer_than_a_slot_runs_alone_and_matches(processor, tiny_model) -> None:
    (request,) = make_requests(processor, tiny_model, 1, seed=5)
    request = GenerationRequest(request.prompt_ids, request.audio, max_new_tokens=40)
    engine = BatchingEngine(tiny_model, slot_tokens=len(request.prompt_ids) + 8)
    assert engine.submit(request).result(60) == alone(tiny_model, request)
    engine.close()


def test_a_failing_request_fails_alone(processor, tiny_model) -> None:
    (good,) = make_requests(processor, tiny_model, 1, seed=7)
    engine = BatchingEngine(tiny_model)
    bad = engine.submit(GenerationRequest([*good.prompt_ids[:5], 10**9], None))  # not a token
    with pytest.raises(IndexError):
        bad.result(30)
    assert engine.submit(good).result(30) == alone(tiny_model, good)
    engine.close()


def test_questions_about_the_same_audio_reuse_its_prefix(processor, tiny_model) -> None:
    """The system prompt + audio span is prefilled once; every answer still equals alone."""
    clip = noise(2.5, seed=11)
    questions = ["What is it?", "How long is it?", "Is there speech?", "Describe it."]
    requests = []
    for question in questions:
        inputs = processor(text=question, audios=[clip])
        with torch.no_grad():
            audio = tiny_model.project_audio(
                tiny_model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
            )
        requests.append(GenerationRequest(inputs["input_ids"][0].tolist(), audio, 12))
    expected = [alone(tiny_model, r) for r in requests]
    engine = BatchingEngine(tiny_model, max_batch=2)
    assert [engine.submit(r).result(60) for r in requests] == expected
    assert (engine.prefixes.misses, engine.prefixes.hits) == (1, 3)
    assert 0 < engine.prefixes.bytes <= engine.memory["prefix_cache_bytes"]
    engine.close()
    off = BatchingEngine(tiny_model, prefix_cache_bytes=0)
    assert [off.submit(r).result(60) for r in requests] == expected
    assert off.prefixes.hits == 0
    off.close()
    # Another scope (another tenant) never reuses a prefix it did not prefill itself.
    scoped = BatchingEngine(tiny_model, max_batch=2)
    for scope in ("ta", "tb"):
        for r in requests[:2]:
            assert scoped.submit(dataclasses.replace(r, cache_scope=scope)).result(60) == alone(
                tiny_model, r
            )
    assert (scoped.prefixes.misses, scoped.prefixes.hits) == (2, 2)
    scoped.close()


def test_the_prefix_cache_stays_within_its_budget() -> None:
    from services.inference.engine import PrefixCache

    cache = PrefixCache(capacity=3 * 400)
    for i in range(5):
        cache.put(str(i), [(torch.zeros(1, 10, 5), torch.zeros(1, 10, 5))])  # 400 bytes
    assert cache.bytes == 1200 and cache.get("0") is None and cache.get("4") is not None


def test_rows_of_different_lengths_ignore_whatever_memory_held(processor, tiny_model) -> None:
    """Fresh slot memory is uninitialised (it can hold NaN); a shorter row must not see it."""
    from model.slots import SlotKVCache, decode_step, prefill

    requests = make_requests(processor, tiny_model, 2, seed=13)
    cache = SlotKVCache.for_model(tiny_model, 2, 512)
    for tensor in (*cache.keys, *cache.values):
        tensor.fill_(float("nan"))
    last = [
        int(prefill(tiny_model, cache, i, r.prompt_ids, r.audio).argmax())
        for i, r in enumerate(requests)
    ]
    got = [[t] for t in last]
    for _ in range(5):
        last = decode_step(tiny_model, cache, torch.tensor(last)).argmax(-1).tolist()
        for row, token in zip(got, last, strict=True):
            row.append(token)
    for request, tokens in zip(requests, got, strict=True):
        reference = alone(tiny_model, GenerationRequest(request.prompt_ids, request.audio, 6))
        assert tokens[: len(reference)] == reference
