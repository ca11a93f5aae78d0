"""The generation engine: continuous batching over one model (submit, stream, cancel).

Worker threads (and the KServe generator) submit requests and wait on their handles; one engine
thread owns the model. Requests join and leave the running batch between decode steps: a new
request is prefilled into a free slot of a slot KV cache (model/slots.py) while the others wait
one step at most (one prefill per step while rows decode), a finished or cancelled request frees
its slot at once, and no row computes padding. Each row keeps its own positions, length and
sampling settings (its own seeded generator), so a request's tokens are those it would get
alone, whatever shares the batch.

Prefix reuse: questions about the same audio share their prompt up to the end of the audio
span (system prompt, audio, time markers). The keys and values of that prefix are kept in a
bounded LRU cache (MOSS_PREFIX_CACHE_MB), keyed by a digest of the prefix tokens and the audio
embeddings themselves, so a second question prefills only its own instruction.

Memory: the slots come from a budget in bytes (MOSS_KV_CACHE_MB): slots = budget // (bytes per
token x slot_tokens), capped by max_batch; `engine.memory` reports it. A request that does not
fit one slot (prompt + max_new_tokens > slot_tokens) runs alone, with its own cache, between
steps.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from model import AudioEmbeddings
from model.generation import SamplingParams, generate, next_tokens
from model.slots import SlotKVCache, decode_step, prefill
from model.tokens import AUDIO_EOS_ID, STOP_TOKEN_IDS

_DONE = object()
DEFAULT_SLOT_TOKENS = 4096
DEFAULT_KV_BUDGET_BYTES = 1 << 30
DEFAULT_PREFIX_CACHE_BYTES = 256 << 20
MIN_PREFIX_TOKENS = 16  # shorter shared prefixes are cheaper to prefill than to copy


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    audio: AudioEmbeddings | None
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    # prefixes are reused only between requests of one scope (a tenant, unless the operator
    # shares caches): a hit is faster, and the speed would tell one tenant what another asked
    cache_scope: str = ""

    def sampling(self) -> SamplingParams:
        sampled = self.temperature > 0
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            do_sample=sampled,
            temperature=self.temperature if sampled else 1.0,
            top_k=self.top_k if sampled else 0,
            top_p=self.top_p if sampled else 1.0,
            seed=self.seed,
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


class PrefixCache:
    """Prefix keys/values by digest, least recently used dropped beyond `capacity` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bytes = 0
        self._items: OrderedDict[str, tuple[list, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> list | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: str, prefix: list) -> None:
        size = sum(k.numel() * k.element_size() * 2 for k, _ in prefix)
        if size > self.capacity or key in self._items:
            return
        while self.bytes + size > self.capacity:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
        self._items[key] = (prefix, size)
        self.bytes += size


def prefix_key(request: GenerationRequest, length: int) -> str:
    """A digest of the cache scope, the prefix tokens and the audio embeddings (DeepStack
    included)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(request.cache_scope.encode() + b"\0")
    digest.update(torch.tensor(request.prompt_ids[:length]).numpy().tobytes())
    for tensor in (request.audio.embeds, *request.audio.deepstack):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def shared_prefix_length(request: GenerationRequest) -> int:
    """Tokens up to and including the last <|audio_eos|> (0: no audio, or nothing after it)."""
    if request.audio is None or AUDIO_EOS_ID not in request.prompt_ids:
        return 0
    length = len(request.prompt_ids) - request.prompt_ids[::-1].index(AUDIO_EOS_ID)
    return length if MIN_PREFIX_TOKENS <= length < len(request.prompt_ids) else 0


@dataclass
class _Row:
    """A running request in slot `index` of the cache (index == position in `rows`)."""

    handle: RequestHandle
    params: SamplingParams
    generator: torch.Generator | None
    last: int = 0  # the token chosen last, fed to the next decode step


class BatchingEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int = 8,
        gather_s: float = 0.005,
        kv_budget_bytes: int | None = None,
        slot_tokens: int | None = None,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        self.model = model
        self.gather_s = gather_s
        context = int(model.config.language_config.max_position_embeddings)
        self.slot_tokens = min(context, slot_tokens or DEFAULT_SLOT_TOKENS)
        budget = kv_budget_bytes or DEFAULT_KV_BUDGET_BYTES
        per_slot = SlotKVCache.bytes_per_token(model) * self.slot_tokens
        self.slots = max(1, min(max_batch, budget // per_slot))
        self.memory = {
            "kv_budget_bytes": budget,
            "kv_cache_bytes": self.slots * per_slot,
            "slots": self.slots,
            "slot_tokens": self.slot_tokens,
            "prefix_cache_bytes": prefix_cache_bytes,
        }
        self.prefixes = PrefixCache(prefix_cache_bytes)
        self._cache: SlotKVCache | None = None  # allocated by the engine thread on first use
        self._rows: list[_Row] = []
        self._pending: queue.Queue[RequestHandle | None] = queue.Queue()
        self._ids = itertools.count()
        self._closed = False
        self.batches_run = 0  # busy periods: from the first request of an idle engine to idle
        self.steps_run = 0  # decode steps
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
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

    def _loop(self) -> None:
        closing = False
        while True:
            if not self._rows:  # idle: wait for work, then gather what arrives with it
                first = self._pending.get()
                if first is None:
                    return
                self.batches_run += 1
                self._admit(first)
                deadline = time.monotonic() + self.gather_s
                while len(self._rows) < self.slots and (left := deadline - time.monotonic()) > 0:
                    try:
                        item = self._pending.get(timeout=left)
                    except queue.Empty:
                        break
                    if item is None:
                        self._pending.put(None)
                        break
                    self._admit(item)
            elif len(self._rows) < self.slots and not closing:  # one prefill per step
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    item = False
                if item is None:
                    closing = True  # finish what runs, admit nothing more
                elif item:
                    self._admit(item)
            if self._rows:
                self._guarded(self._step)
            elif closing:
                return

    def _guarded(self, work, *args) -> None:
        try:
            work(*args)
        except BaseException as exc:
            self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for row in self._rows:
            if not row.handle.done:
                row.handle._finish(exc)
        self._rows.clear()

    def _admit(self, handle: RequestHandle) -> None:
        request = handle.request
        if handle.cancelled:
            handle._finish()
            return
        params = request.sampling()
        generator = None
        device = self.model.lm_head.weight.device
        if params.do_sample and params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        if len(request.prompt_ids) + request.max_new_tokens > self.slot_tokens:
            self._run_alone(handle, params)
            return
        if self._cache is None:
            self._cache = SlotKVCache.for_model(self.model, self.slots, self.slot_tokens)
        row = _Row(handle, params, generator)
        slot = len(self._rows)
        try:
            logits = self._prefill(slot, request)
        except BaseException as exc:
            handle._finish(exc)
            return
        self._rows.append(row)
        self._choose([row], logits[None])

    def _prefill(self, slot: int, request: GenerationRequest) -> torch.Tensor:
        """The prompt into `slot`, reusing a cached audio prefix when there is one."""
        length = shared_prefix_length(request) if self.prefixes.capacity else 0
        if not length:
            return prefill(self.model, self._cache, slot, request.prompt_ids, request.audio)
        key = prefix_key(request, length)
        cached = self.prefixes.get(key)
        if cached is not None:
            start = self._cache.write_prefix(slot, cached)
            return prefill(self.model, self._cache, slot, request.prompt_ids[start:], None, start)
        logits = prefill(self.model, self._cache, slot, request.prompt_ids, request.audio)
        self.prefixes.put(key, self._cache.read_prefix(slot, length))
        return logits

    def _step(self) -> None:
        for index in range(len(self._rows) - 1, -1, -1):  # cancellation frees the slot now
            if self._rows[index].handle.cancelled:
                self._leave(index)
        if not self._rows:
            return
        tokens = torch.tensor([row.last for row in self._rows])
        logits = decode_step(self.model, self._cache, tokens)
        self.steps_run += 1
        self._choose(list(self._rows), logits)

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token with its own settings; rows that are done leave."""
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            if row.params.do_sample:
                chosen[i] = int(next_tokens(logits[i : i + 1], row.params, row.generator)[0])
        for row, token in zip(rows, chosen, strict=True):
            row.last = token
            row.handle._emit(token)
        for row in rows:
            ended = (
                row.last in STOP_TOKEN_IDS or len(row.handle.tokens) >= row.params.max_new_tokens
            )
            if ended or row.handle.cancelled:
                self._leave(next(i for i, r in enumerate(self._rows) if r is row))

    def _leave(self, index: int) -> None:
        """Finish row `index` and keep the running slots dense (the last one moves in)."""
        row = self._rows[index]
        last = len(self._rows) - 1
        if index != last:
            self._cache.move(last, index)
            self._rows[index] = self._rows[last]
        self._rows.pop()
        row.handle._finish()

    def _run_alone(self, handle: RequestHandle, params: SamplingParams) -> None:
        """A request longer than a slot: its own cache, to the end, between two steps."""
        request = handle.request

        def on_tokens(tokens: torch.Tensor) -> None:
            if len(handle.tokens) < params.max_new_tokens and not handle.cancelled:
                token = int(tokens[0])
                if not (handle.tokens and handle.tokens[-1] in STOP_TOKEN_IDS):
                    handle._emit(token)

        try:
            generate(
                self.model,
                torch.tensor([request.prompt_ids]),
                audio_embeddings=request.audio,
                max_new_tokens=params.max_new_tokens,
                do_sample=params.do_sample,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                seed=params.seed,
                streamer=on_tokens,
                should_stop=lambda: handle.cancelled,
            )
        except BaseException as exc:
            handle._finish(exc)
            return
        handle._finish()
