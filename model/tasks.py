"""The tasks the platform offers and the instruction each one sends to the model.

Serving (services.jobs.stages) and training (pipelines.train) build prompts from this one
table, so a model is trained on exactly the wording it is later asked with.
"""

from __future__ import annotations

TASK_PROMPTS = {
    "transcribe": "Transcribe the speech in this audio.",
    "transcribe_timestamps": (
        "Transcribe the speech in this audio with timestamps for each sentence."
    ),
    "caption": "Describe this audio in detail.",
}
OPEN_TASKS = ("ask", "chat")  # the user's prompt is the instruction
TASKS = (*TASK_PROMPTS, *OPEN_TASKS)


def instruction_for(task: str, prompt: str | None) -> str:
    """The instruction text for a task; a prompt on a fixed task is appended to it."""
    if task in OPEN_TASKS:
        return prompt or ""
    base = TASK_PROMPTS[task]
    return f"{base} {prompt}" if prompt else base


# Long audio (docs/api.md, "Long audio"): the encoder works in independent 4 s windows, so its
# cost is linear and it has no length limit; the decoder's context is the limit. Tasks about the
# whole clip see the whole clip, as the official model does; transcription may be cut at quiet
# points into segments that run in parallel and are merged with time offsets.
SEGMENTED_TASKS = ("transcribe", "transcribe_timestamps")


def segment_seconds_for(task: str, transcription_segment_seconds: float) -> float | None:
    """The longest segment a job of `task` is cut into, or None: the whole clip at once."""
    return transcription_segment_seconds if task in SEGMENTED_TASKS else None
