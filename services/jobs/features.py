"""The feature file between the stages: one safetensors file per (audio, weights, cut).

Features are content-addressed (audio digest + weights digest + how the audio was cut), so a
second job on the same audio skips the encoder. The file holds every segment's features and
DeepStack taps, and its metadata says where each segment sits in the clip and which model
version made it (the generator refuses features of another version).
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model import EncoderOutput


def cache_scope(tenant: str, shared: bool) -> str:
    """Whose jobs share cached work: one tenant's own (the default), or everyone's
    (MOSS_SHARED_CACHE). A per-tenant scope keeps a tenant from learning, by a cache hit or a
    faster answer, that another tenant sent the same audio. A digest, so the tenant's name goes
    neither into object keys nor to an outside server (vLLM's cache_salt)."""
    if shared:
        return "shared"
    return "t" + hashlib.blake2b(tenant.encode(), digest_size=10).hexdigest()


def features_key(audio_sha256: str, version: str, segment_seconds: float | None, scope: str) -> str:
    """Content-addressed within a cache scope: the audio, the weights, and how the audio was
    cut (a caption of a clip needs it whole, its transcription may have been split)."""
    plan = "whole" if segment_seconds is None else f"seg{segment_seconds:g}"
    return f"features/{scope}/{audio_sha256}-{version}-{plan}.safetensors"


def cache_plan(plan: float | None, audio_seconds: float | None) -> float | None:
    """The plan a cache lookup names: a clip clearly shorter than one segment is encoded whole
    either way, so its caption and its transcription share one set of features. The margin
    covers a duration measured from packet timestamps; a clip near the limit is looked up
    under its segmented key and, if it came out as one segment, stored under the whole one
    (a miss, never a wrong hit)."""
    if plan is not None and audio_seconds is not None and audio_seconds + 1.0 < plan:
        return None
    return plan


def pack_features(segments, outputs: list[EncoderOutput], version: str) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for i, out in enumerate(outputs):
        tensors[f"features.{i}"] = out.features.contiguous()
        for k, tap in enumerate(out.taps):
            tensors[f"tap{k}.{i}"] = tap.contiguous()
    meta = [
        {"offset": s.offset_seconds, "duration": s.duration_seconds, "tokens": len(o.features)}
        for s, o in zip(segments, outputs, strict=True)
    ]
    return save_safetensors(
        tensors, metadata={"segments": json.dumps(meta), "model_version": version}
    )


def load_features(blob: bytes) -> tuple[list[dict], list[EncoderOutput]]:
    tensors = load_safetensors(blob)
    segments = json.loads(metadata(blob)["segments"])
    taps = sorted({int(k[3:].split(".")[0]) for k in tensors if k.startswith("tap")})
    outputs = [
        EncoderOutput(
            features=tensors[f"features.{i}"],
            taps=[tensors[f"tap{k}.{i}"] for k in taps],
            token_lengths=torch.tensor([s["tokens"]]),
        )
        for i, s in enumerate(segments)
    ]
    return segments, outputs


def metadata(blob: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (8-byte length, then JSON)."""
    header_len = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
