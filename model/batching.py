"""Batching rules the whole model shares: prompts are left-padded, mel is zero-padded.

Left padding keeps every row's last real token in the last column, so one decoding step serves
the whole batch; positions are counted from each row's first real token (modeling.py), so a row
in a batch generates what it would alone. Mel is padded on the right and its frame counts travel
with it, so the encoder masks what is padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .tokens import ENDOFTEXT_ID


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int = ENDOFTEXT_ID
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Token id lists -> input_ids (B, L) left-padded with `pad_id`, attention_mask (B, L)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def pad_mels(mels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, frames_i) each -> audio_data (N, n_mels, max frames) zero-padded, seqlens (N,)."""
    frames = max(mel.shape[-1] for mel in mels)
    audio_data = torch.zeros(len(mels), mels[0].shape[0], frames)
    for i, mel in enumerate(mels):
        audio_data[i, :, : mel.shape[-1]] = mel
    return audio_data, torch.tensor([mel.shape[-1] for mel in mels])
