"""Batched encoding across jobs: the clips of concurrent callers in one encoder pass.

The encoder worker's threads (and the KServe encoder predictor's executor) each hold one job's
segments. Called one by one, the encoder runs small matrix products on a few 4 s windows each;
gathered, the windows of every clip waiting are one batch (`model.encode_audio` already keeps
each clip's result independent of what shares its batch, within float tolerance).

No time is spent waiting for company: an idle batcher encodes the first request at once, and
whatever arrives while a pass runs makes up the next pass, up to `max_batch_seconds` of audio.
A request longer than that runs in a pass of its own (the encoder bounds its memory by groups of
windows). If a gathered pass fails, each request is encoded again alone, so one bad clip fails
only its own job.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
import torch

from model import EncoderOutput
from model.audio_formats import SAMPLE_RATE
from model.batching import pad_mels
from model.features import log_mel_spectrogram

DEFAULT_BATCH_SECONDS = 120.0


def encode_waveforms(model: torch.nn.Module, waveforms: list[np.ndarray]) -> list[EncoderOutput]:
    """Segments (16 kHz mono) -> one EncoderOutput per segment, on the CPU, in one batch."""
    batch, lengths = pad_mels([log_mel_spectrogram(w) for w in waveforms])
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.encode_audio(batch.to(device), lengths.to(device))
    counts = out.token_lengths.tolist()
    features = out.features.split(counts)
    taps = [tap.split(counts) for tap in out.taps]
    return [
        EncoderOutput(
            features=features[i].contiguous().cpu(),
            taps=[t[i].contiguous().cpu() for t in taps],
            token_lengths=torch.tensor([n]),
        )
        for i, n in enumerate(counts)
    ]


class EncodeBatcher:
    def __init__(self, model: torch.nn.Module, max_batch_seconds: float = DEFAULT_BATCH_SECONDS):
        self.model = model
        self.max_samples = int(max_batch_seconds * SAMPLE_RATE)
        self._waiting: queue.Queue[tuple[list[np.ndarray], Future] | None] = queue.Queue()
        self._carry: tuple[list[np.ndarray], Future] | None = None
        self.passes = 0  # encoder passes run
        self.requests = 0  # requests served
        self._thread = threading.Thread(target=self._loop, name="encode-batcher", daemon=True)
        self._thread.start()

    def encode(self, waveforms: list[np.ndarray]) -> list[EncoderOutput]:
        """16 kHz mono segments -> one EncoderOutput per segment (blocks until encoded)."""
        future: Future = Future()
        self._waiting.put((waveforms, future))
        return future.result()

    def close(self) -> None:
        self._waiting.put(None)
        self._thread.join(timeout=30)

    # --- batcher thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._carry or self._waiting.get()
            self._carry = None
            if first is None:
                return
            batch, samples = [first], sum(w.size for w in first[0])
            while True:  # what is already waiting, up to the budget
                try:
                    item = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if item is None or samples + sum(w.size for w in item[0]) > self.max_samples:
                    self._carry = item  # the first of the next pass (or the end)
                    break
                batch.append(item)
                samples += sum(w.size for w in item[0])
            self._run(batch)

    def _run(self, batch: list[tuple[list[np.ndarray], Future]]) -> None:
        live = [(w, f) for w, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        self.passes += 1
        self.requests += len(live)
        if len(live) == 1:
            _settle(live[0][1], lambda: encode_waveforms(self.model, live[0][0]))
            return
        try:
            outputs = encode_waveforms(self.model, [w for waveforms, _ in live for w in waveforms])
        except Exception:
            for waveforms, future in live:  # one bad clip fails only its own request
                _settle(future, lambda waveforms=waveforms: encode_waveforms(self.model, waveforms))
            return
        start = 0
        for waveforms, future in live:
            future.set_result(outputs[start : start + len(waveforms)])
            start += len(waveforms)


def _settle(future: Future, work) -> None:
    try:
        future.set_result(work())
    except BaseException as exc:
        future.set_exception(exc)
