"""Autoregressive generation with a preallocated KV cache: greedy or sampled.

The prompt (left-padded when batched) is run once (prefill: audio encoding, DeepStack, cache
fill), then one token per step reuses the cache. Left padding plus positions counted from each
row's first real token make a row's output in a batch the same as the row generated alone.
Finished rows keep emitting `pad_token_id` until every row is done or the budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tokens import ENDOFTEXT_ID, STOP_TOKEN_IDS

Streamer = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use do_sample=False)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


def next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, vocab) logits -> (B,) token ids."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    audio_data: torch.Tensor | None = None,
    audio_data_seqlens: torch.Tensor | None = None,
    audio_input_mask: torch.Tensor | None = None,
    *,
    audio_embeddings: object | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Streamer | None = None,
    should_stop: Callable[[], bool | torch.Tensor] | None = None,
    **unsupported: object,
) -> torch.LongTensor:
    """Returns the new tokens only, (B, n) with n <= max_new_tokens.

    `should_stop` is polled between steps (cancellation): True stops every row, a (B,) bool
    tensor stops the rows it marks (they emit padding from then on); `streamer` receives each
    step's (B,) tokens as they are chosen.
    """
    ignored = {k for k, v in unsupported.items() if v is not None} - {"use_cache", "return_dict"}
    if ignored:
        raise TypeError(f"unsupported generation arguments: {', '.join(sorted(ignored))}")
    params = SamplingParams(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
    stop_ids = eos_token_id if eos_token_id is not None else list(STOP_TOKEN_IDS)
    stop_ids = torch.tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids))
    pad_id = ENDOFTEXT_ID if pad_token_id is None else pad_token_id

    device = model.lm_head.weight.device
    input_ids = input_ids.to(device)
    batch, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    generator = None
    if params.do_sample and params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    cache = model.new_cache(batch, prompt_len + params.max_new_tokens)
    logits = model(
        input_ids,
        attention_mask,
        audio_data=audio_data,
        audio_data_seqlens=audio_data_seqlens,
        audio_input_mask=audio_input_mask,
        audio_embeddings=audio_embeddings,
        cache=cache,
        logits_to_keep=1,
    ).logits[:, -1]

    stop_ids = stop_ids.to(device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    ones = attention_mask.new_ones(batch, 1)
    for step in range(params.max_new_tokens):
        token = next_tokens(logits, params, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        if streamer is not None:
            streamer(token)
        finished |= torch.isin(token, stop_ids)
        if should_stop is not None:
            stop = should_stop()
            finished |= stop.to(device) if isinstance(stop, torch.Tensor) else bool(stop)
        if step == params.max_new_tokens - 1 or bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        logits = model(token[:, None], attention_mask, cache=cache, logits_to_keep=1).logits[:, -1]
    return torch.stack(out, dim=1)
