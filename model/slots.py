"""Continuous-batching primitives: a slot KV cache, a prefill into one slot, a decode step.

Every running sequence owns a slot: a row of a preallocated (slots, H_kv, slot_tokens, hd)
buffer per layer, and its own length. Sequences join (a prefill writes one slot) and leave (the
last running slot is moved into the freed one, so running rows are always slots 0..n-1 and a
decode step reads plain views, never a gather) between decode steps. A row keeps its own
positions from 0 and attends only to its own keys, so its tokens are those it would produce
alone: no left padding, no padding compute for finished rows.

    cache = SlotKVCache.for_model(model, slots=8, slot_tokens=4096)
    logits = prefill(model, cache, slot=n, input_ids=ids, audio=audio)   # (vocab,)
    logits = decode_step(model, cache, tokens)                            # (n, vocab)
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self,
        num_layers: int,
        slots: int,
        num_kv_heads: int,
        head_dim: int,
        slot_tokens: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (slots, num_kv_heads, slot_tokens, head_dim)
        # torch.empty: on the CPU pages are only touched when a slot writes them.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.slots = slots
        self.slot_tokens = slot_tokens
        self._clean = [False] * slots

    def claim(self, slot: int) -> None:
        """Zero a slot the first time it is used. A decode step reads every row up to the longest
        one and masks the rest; masked keys must still be finite (uninitialised memory can hold
        NaN, and NaN survives a masked softmax). Zeroing once per slot keeps pages untouched
        until a slot is needed."""
        if not self._clean[slot]:
            for tensor in (*self.keys, *self.values):
                tensor[slot].zero_()
            self._clean[slot] = True

    @classmethod
    def for_model(cls, model: torch.nn.Module, slots: int, slot_tokens: int) -> SlotKVCache:
        language = model.config.language_config
        weight = model.lm_head.weight
        return cls(
            language.num_hidden_layers,
            slots,
            language.num_key_value_heads,
            language.head_dim,
            slot_tokens,
            weight.dtype,
            weight.device,
        )

    @staticmethod
    def bytes_per_token(model: torch.nn.Module) -> int:
        language = model.config.language_config
        element = model.lm_head.weight.element_size()
        return (
            2
            * language.num_hidden_layers
            * language.num_key_value_heads
            * language.head_dim
            * element
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def move(self, source: int, target: int) -> None:
        """Move slot `source`'s sequence into slot `target` (a sequence left; keep 0..n-1 dense)."""
        n = int(self.lengths[source])
        for layer in range(len(self.keys)):
            self.keys[layer][target, :, :n] = self.keys[layer][source, :, :n]
            self.values[layer][target, :, :n] = self.values[layer][source, :, :n]
        self.lengths[target] = n

    def read_prefix(self, slot: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the first `n` positions of `slot`, per layer ((H_kv, n, hd) keys, values)."""
        return [
            (k[slot, :, :n].clone(), v[slot, :, :n].clone())
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    def write_prefix(self, slot: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Put a prefix read by `read_prefix` at the start of `slot`; returns its length."""
        n = prefix[0][0].shape[1]
        self.claim(slot)
        for layer, (k, v) in enumerate(prefix):
            self.keys[layer][slot, :, :n] = k
            self.values[layer][slot, :, :n] = v
        self.lengths[slot] = n
        return n


class _PrefillView:
    """One slot, written from position `start` (0, or after a reused prefix)."""

    def __init__(self, cache: SlotKVCache, slot: int, start: int = 0) -> None:
        cache.claim(slot)
        self.cache, self.slot, self.start, self.length = cache, slot, start, start

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.start + k.shape[2]
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[self.slot, :, self.start : end] = k[0]
        values[self.slot, :, self.start : end] = v[0]
        return keys[self.slot : self.slot + 1, :, :end], values[self.slot : self.slot + 1, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.cache.lengths[self.slot] = self.start + num_tokens


class _DecodeView:
    """Slots 0..n-1, one new token each, written at each row's own length."""

    def __init__(self, cache: SlotKVCache, n: int) -> None:
        self.cache, self.n = cache, n
        self.lengths = cache.lengths[:n].clone()  # (n,) where each new token goes
        self.width = int(self.lengths.max()) + 1
        self.length = self.width - 1  # only read when no attention mask is given

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        index = self.lengths.view(-1, 1, 1, 1).expand(-1, k.shape[1], 1, k.shape[3])
        keys = self.cache.keys[layer][: self.n]
        values = self.cache.values[layer][: self.n]
        keys.scatter_(2, index, k)
        values.scatter_(2, index, v)
        return keys[:, :, : self.width], values[:, :, : self.width]

    def advance(self, num_tokens: int) -> None:
        self.cache.lengths[: self.n] += num_tokens


@torch.inference_mode()
def prefill(
    model: torch.nn.Module,
    cache: SlotKVCache,
    slot: int,
    input_ids: list[int],
    audio: object | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Run one prompt (with its audio embeddings) into `slot`; the last position's logits.

    With `start`, the slot already holds the first `start` tokens' keys and values (a reused
    prefix, `write_prefix`) and `input_ids` are the tokens after them."""
    if start + len(input_ids) >= cache.slot_tokens:
        raise ValueError(f"a prompt of {start + len(input_ids)} tokens does not fit a slot")
    device = model.lm_head.weight.device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    out = model(
        ids,
        torch.ones(1, start + len(input_ids), dtype=torch.long, device=device),
        audio_embeddings=audio,
        cache=_PrefillView(cache, slot, start),
        logits_to_keep=1,
    )
    return out.logits[0, -1]  # (vocab,)


@torch.inference_mode()
def decode_step(model: torch.nn.Module, cache: SlotKVCache, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (n,): the last token of each running slot 0..n-1 -> next-token logits (n, vocab)."""
    n = tokens.shape[0]
    view = _DecodeView(cache, n)
    device = model.lm_head.weight.device
    keys = torch.arange(view.width, device=device)[None, :]  # (1, S)
    mask = (keys <= view.lengths[:, None])[:, None, None, :]  # (n, 1, 1, S): own keys only
    out = model(
        tokens.view(n, 1).to(device),
        None,
        position_ids=view.lengths.view(n, 1),
        attention_mask_4d=mask,
        cache=view,
        logits_to_keep=1,
    )
    return out.logits[:, -1]  # (n, vocab)
