"""Subtitle and verbose_json shapes of a transcript, from the model's timed items."""

from __future__ import annotations

from services.gateway import transcripts

RESULT = {
    "text": "Hello there. How are you? Fine.",
    "segments": [
        {"start": 0.0, "end": 1.5, "text": "Hello there."},
        {"start": 1.5, "end": None, "text": "How are you?"},  # a point in time
        {"start": None, "end": None, "text": "Fine.", "flag": "no_timestamp"},
    ],
}


def test_cues_fill_missing_times_from_the_neighbours_and_the_clip() -> None:
    assert transcripts.cues(RESULT, 4.0) == [
        (0.0, 1.5, "Hello there."),
        (1.5, 4.0, "How are you?"),
        (4.0, 4.0, "Fine."),
    ]


def test_an_untimed_transcript_is_one_cue_over_the_clip() -> None:
    assert transcripts.cues({"text": "just words"}, 2.25) == [(0.0, 2.25, "just words")]
    assert transcripts.cues({"text": ""}, 2.0) == []


def test_srt_and_vtt() -> None:
    items = [(0.0, 1.5, "Hello there."), (61.25, 3725.5, "Later.")]
    assert transcripts.srt(items) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:01:01,250 --> 01:02:05,500\nLater.\n"
    )
    assert transcripts.vtt(items).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n")


def test_verbose_json_has_the_openai_fields() -> None:
    body = transcripts.verbose(RESULT, 4.0, "en")
    assert body["task"] == "transcribe" and body["language"] == "en" and body["duration"] == 4.0
    assert [s["id"] for s in body["segments"]] == [0, 1, 2]
    assert body["segments"][1] == {"id": 1, "start": 1.5, "end": 4.0, "text": "How are you?"}
