"""The generation engine's request interface, and timestamp parsing."""

from __future__ import annotations

import threading

import pytest
import torch

from model.timestamps import TimedText, parse_timestamps
from services.generator.engine import BatchingEngine, GenerationRequest
from tests.conftest import noise


def requests(processor, model, count: int, new_tokens: int = 8) -> list[GenerationRequest]:
    out = []
    for i in range(count):
        clip = noise(1.0 + 0.7 * i, seed=i)
        inputs = processor(text=f"Question {i}?", audios=[clip])
        with torch.no_grad():
            audio = model.project_audio(
                model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
            )
        out.append(GenerationRequest(inputs["input_ids"][0].tolist(), audio, new_tokens))
    return out


def test_concurrent_requests_share_batches_and_match_alone(processor, tiny_model) -> None:
    reqs = requests(processor, tiny_model, 4)
    alone_engine = BatchingEngine(tiny_model, max_batch=1)
    alone = [alone_engine.submit(r).result(60) for r in reqs]
    alone_engine.close()

    engine = BatchingEngine(tiny_model, max_batch=8, gather_s=0.2)
    handles: list = [None] * len(reqs)

    def worker(i: int) -> None:
        handles[i] = engine.submit(reqs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [h.result(60) for h in handles]
    engine.close()
    assert results == alone
    assert engine.batches_run < len(reqs)  # they were batched


def test_stream_and_cancel(processor, tiny_model) -> None:
    (req,) = requests(processor, tiny_model, 1, new_tokens=400)
    engine = BatchingEngine(tiny_model)
    handle = engine.submit(req)
    streamed = []
    for token in handle.stream(timeout=60):
        streamed.append(token)
        if len(streamed) == 3:
            handle.cancel()
    assert 3 <= len(streamed) < 400 and handle.tokens == streamed
    engine.close()


def test_closed_engine_refuses_work(tiny_model) -> None:
    engine = BatchingEngine(tiny_model)
    engine.close()
    with pytest.raises(RuntimeError):
        engine.submit(GenerationRequest([1, 2, 3], None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[0.00-2.50] Hello there. [2.50-4.10] General Kenobi.",
            [TimedText(0.0, 2.5, "Hello there."), TimedText(2.5, 4.1, "General Kenobi.")],
        ),
        (
            "[00:01.20 --> 00:03.40] one\n[01:02.00 --> 01:03.50] two",
            [TimedText(1.2, 3.4, "one"), TimedText(62.0, 63.5, "two")],
        ),
        (
            "<|0.00|>first<|1.50|>second<|3.00|>",
            [TimedText(0, 1.5, "first"), TimedText(1.5, 3, "second")],
        ),
        ("(1.2s - 3.4s) words", [TimedText(1.2, 3.4, "words")]),
        ("no times here", []),
    ],
)
def test_parse_timestamps(text, expected) -> None:
    assert parse_timestamps(text) == expected


def test_offsets_are_added() -> None:
    assert parse_timestamps("[0.5-1.0] x", offset=120.0) == [TimedText(120.5, 121.0, "x")]
