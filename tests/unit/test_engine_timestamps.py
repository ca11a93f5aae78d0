"""The generation engine's request interface, and timestamp parsing."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.timestamps import TimedText, parse_timestamps
from services.inference.engine import BatchingEngine, GenerationRequest
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
        ("no times here", [TimedText(None, None, "no times here", "no_timestamp")]),
        (
            "0.00 - 57.00: birds chirping\n57.00 - 60.00: a car passes",
            [TimedText(0.0, 57.0, "birds chirping"), TimedText(57.0, 60.0, "a car passes")],
        ),
        (
            "At [00:03]-[00:05] a door slams, then [00:08] a dog barks.",
            [
                TimedText(None, None, "At", "no_timestamp"),
                TimedText(3.0, 5.0, "a door slams, then"),
                TimedText(8.0, None, "a dog barks."),
            ],
        ),
        (
            "Here is the transcript:\n[0.0-1.0] hi\n[3.0-2.0] backwards\n1:02:03 is not a span",
            [
                TimedText(None, None, "Here is the transcript:", "no_timestamp"),
                TimedText(0.0, 1.0, "hi"),
                TimedText(3.0, 2.0, "backwards", "end_before_start"),
                TimedText(None, None, "1:02:03 is not a span", "no_timestamp"),
            ],
        ),
    ],
)
def test_parse_timestamps(text, expected) -> None:
    assert parse_timestamps(text) == expected


def test_offsets_are_added() -> None:
    assert parse_timestamps("[0.5-1.0] x", offset=120.0) == [TimedText(120.5, 121.0, "x")]


# --- properties ------------------------------------------------------------------------------

WORDS = st.text(alphabet=st.sampled_from("abcdefghij klmnop,.!?'"), min_size=1, max_size=30)
TIMES = st.integers(min_value=0, max_value=36_000_00).map(lambda c: c / 100)  # 0..10 h, 0.01 s


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds * 100), 6000)
    return f"{minutes:02d}:{rest / 100:05.2f}"


RENDER = {
    "brackets": lambda s, e, t: f"[{s:.2f}-{e:.2f}] {t}",
    "arrow": lambda s, e, t: f"[{_clock(s)} --> {_clock(e)}] {t}",
    "parens": lambda s, e, t: f"({s:.2f}s - {e:.2f}s) {t}",
    "official": lambda s, e, t: f"{s:.2f} - {e:.2f}: {t}",
    "thinking": lambda s, e, t: f"[{_clock(s)}]-[{_clock(e)}] {t}",
}


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(TIMES, TIMES, WORDS), min_size=1, max_size=8),
    style=st.sampled_from(sorted(RENDER)),
    offset=st.sampled_from([0.0, 120.0]),
)
def test_rendered_spans_parse_back(items, style, offset) -> None:
    text = "\n".join(RENDER[style](s, e, t) for s, e, t in items)
    parsed = parse_timestamps(text, offset=offset)
    assert len(parsed) == len(items)
    for (start, end, words), got in zip(items, parsed, strict=True):
        assert got.start == pytest.approx(start + offset, abs=0.006)
        assert got.end == pytest.approx(end + offset, abs=0.006)
        assert got.text == words.strip(" :")
        assert got.flag == ("end_before_start" if end < start else None)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_parses_and_no_line_is_dropped(text) -> None:
    parsed = parse_timestamps(text)
    for item in parsed:
        assert item.flag in (None, "no_timestamp", "end_before_start")
        assert (item.start is None) == (item.flag == "no_timestamp")
    if not any(tag in text for tag in ("<|",)):
        for line in text.splitlines():
            if line.strip():
                assert any(item.text and item.text in line for item in parsed) or any(
                    item.start is not None for item in parse_timestamps(line)
                ), line
