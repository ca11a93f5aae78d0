"""The generation engine: a request interface (submit, stream tokens, cancel) over one model.

Worker threads submit requests and wait on their handles; one engine thread owns the model and
runs what is pending as a batch (left-padded prompts, packed audio embeddings), so concurrent
jobs share forward passes. Batching here is static: requests that arrive while a batch runs
wait for the next one. The interface is what a continuous-batching engine would offer, so one
can replace this class without touching the worker.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field

import torch

from model import AudioEmbeddings
from model.batching import left_pad
from model.generation import generate
from model.tokens import STOP_TOKEN_IDS

_DONE = object()


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    audio: AudioEmbeddings | None
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Requests that can share a batch: the same sampling rule."""
        sampled = self.temperature > 0
        return (
            self.temperature,
            self.top_p,
            self.top_k if sampled else 0,
            self.seed if sampled else None,
        )


@dataclass
class RequestHandle:
    request: GenerationRequest
    id: int
    tokens: list[int] = field(default_factory=list)
    error: BaseException | None = None
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _done: threading.Event = field(default_factory=threading.Event)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating this request at the next step (the rest of the batch goes on)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request is done (True) or the timeout passes (False)."""
        return self._done.wait(timeout)

    def stream(self, timeout: float | None = None):
        """Yield token ids as they are generated; ends when the request is done."""
        while True:
            item = self._queue.get(timeout=timeout)
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def result(self, timeout: float | None = None) -> list[int]:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self.tokens

    def _emit(self, token: int) -> None:
        self.tokens.append(token)
        self._queue.put(token)

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._queue.put(_DONE)
        self._done.set()


class BatchingEngine:
    def __init__(self, model: torch.nn.Module, max_batch: int = 8, gather_s: float = 0.005) -> None:
        self.model = model
        self.max_batch = max_batch
        self.gather_s = gather_s
        self._pending: queue.Queue[RequestHandle | None] = queue.Queue()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._closed = False
        self.batches_run = 0
        self._thread.start()

    def submit(self, request: GenerationRequest) -> RequestHandle:
        if self._closed:
            raise RuntimeError("the engine is closed")
        handle = RequestHandle(request, next(self._ids))
        self._pending.put(handle)
        return handle

    def close(self) -> None:
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout=30)

    # --- engine thread -------------------------------------------------------------------

    def _gather(self) -> list[RequestHandle] | None:
        first = self._pending.get()
        if first is None:
            return None
        batch = [first]
        deferred: list[RequestHandle] = []
        while len(batch) < self.max_batch:
            try:
                item = self._pending.get(timeout=self.gather_s)
            except queue.Empty:
                break
            if item is None:
                self._pending.put(None)
                break
            if item.request.batch_key() == first.request.batch_key():
                batch.append(item)
            else:
                deferred.append(item)
        for item in deferred:
            self._pending.put(item)
        return batch

    def _loop(self) -> None:
        while (batch := self._gather()) is not None:
            live = [h for h in batch if not h.cancelled]
            for handle in batch:
                if handle.cancelled:
                    handle._finish()
            if not live:
                continue
            try:
                self._run(live)
            except BaseException as exc:
                for handle in live:
                    if not handle.done:
                        handle._finish(exc)
            self.batches_run += 1

    def _run(self, batch: list[RequestHandle]) -> None:
        device = self.model.lm_head.weight.device
        input_ids, attention_mask = left_pad([h.request.prompt_ids for h in batch])
        audio = [h.request.audio for h in batch if h.request.audio is not None]
        packed = None
        if audio:
            packed = AudioEmbeddings(
                embeds=torch.cat([a.embeds for a in audio]).to(device),
                deepstack=[
                    torch.cat(layer).to(device)
                    for layer in zip(*(a.deepstack for a in audio), strict=True)
                ],
            )
        budgets = torch.tensor([h.request.max_new_tokens for h in batch])
        done = torch.zeros(len(batch), dtype=torch.bool)
        step = 0

        def on_tokens(tokens: torch.Tensor) -> None:
            nonlocal step
            step += 1
            for row, handle in enumerate(batch):
                if not done[row]:
                    token = int(tokens[row])
                    handle._emit(token)
                    if token in STOP_TOKEN_IDS:  # the row ended; the batch may go on
                        done[row] = True

        def stop_rows() -> torch.Tensor:
            for row, handle in enumerate(batch):
                if handle.cancelled or step >= budgets[row]:
                    done[row] = True
            return done.clone()

        first = batch[0].request
        generate(
            self.model,
            input_ids,
            attention_mask,
            audio_embeddings=packed,
            max_new_tokens=int(budgets.max()),
            do_sample=first.temperature > 0,
            temperature=first.temperature if first.temperature > 0 else 1.0,
            top_p=first.top_p,
            top_k=first.top_k,
            seed=first.seed,
            streamer=on_tokens,
            should_stop=stop_rows,
        )
        for handle in batch:
            handle._finish()
