"""Memory plan: the estimated per-GPU memory of a `mossctl train` run, before renting GPUs.

Parameter counts come from the presets' configs, built on the meta device (no weights are
allocated, so 8B is counted in a second on a laptop). Per rank, under FSDP2 above one process
(one unit per decoder layer plus the rest as the root unit) or plain in one process:

- weights: every parameter, sharded by the world size (fp32 master copies);
- gradients and AdamW's two moments: the trainable parameters only, sharded, fp32;
- gathered: FSDP2's unsharded units (the root for the whole step, with its gradients; two
  decoder layers, the one computing and the one prefetched); one process in bf16: autocast's
  bf16 copies of the weights backward multiplies by;
- activations: what autograd keeps for backward, counted tensor by tensor from the forward of
  model/qwen3.py (norms, q/k norms, RoPE, SDPA without an s x s matrix, the gated MLP), the
  audio branch (adapter and DeepStack mergers; the encoder and its conv stem only when it
  trains) and the vocabulary head over the answer tokens only (the log-softmax and the two
  gradients its backward holds). With activation checkpointing a decoder layer keeps only its
  input, plus one layer's full activations while it is recomputed.

The peak is not the sum of all of these: gradients grow while activations are freed. A step
peaks at one of three moments (`Plan.moments`): the root's all-gather at the start of forward,
the start of backward (every activation) or its end (every gradient). Activations do not shrink
with the world size (each rank runs its own micro-batch), so a run whose activations alone
exceed a GPU needs checkpointing or a smaller micro-batch, not more GPUs.

Checked against measured peaks on CPU (fp32, world size 1 and 2, tiny and small presets, full
and LoRA, with and without checkpointing: benchmarks/train.py, docs/benchmarks.md); the bf16
byte counts follow the same tensors but have not been measured (no GPU).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
PRECISIONS = ("bf16", "fp32")  # bf16: CUDA mixed precision (bf16 compute); fp32: CPU
USABLE = 0.9  # share of a GPU's memory a plan may fill (CUDA context, allocator fragmentation)


@dataclass(frozen=True)
class Counts:
    """Parameter counts by part of the model (and its shape numbers the activations need)."""

    encoder: int
    audio_head: int  # adapter + DeepStack mergers
    embeddings: int
    lm_head: int
    layer: int  # one decoder layer
    layers: int  # number of decoder layers
    final_norm: int
    lora_layer: int  # LoRA adapters of one decoder layer at the plan's rank
    shape: dict[str, int]

    @property
    def total(self) -> int:
        return (
            self.encoder
            + self.audio_head
            + self.embeddings
            + self.lm_head
            + self.layer * self.layers
            + self.final_norm
        )


@functools.lru_cache(maxsize=16)
def count_parameters(size: str, lora_rank: int = 8) -> Counts:
    """Count a preset's parameters on the meta device: shapes only, nothing allocated."""
    import torch

    from model import MossAudioModel, preset_config

    config = preset_config(size)
    with torch.device("meta"):
        model = MossAudioModel(config)

    def n(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    language, audio = config.language_config, config.audio_config
    heads, kv, head_dim = (
        language.num_attention_heads,
        language.num_key_value_heads,
        language.head_dim,
    )
    hidden, ffn = language.hidden_size, language.intermediate_size
    ins_outs = [(hidden, heads * head_dim), (hidden, kv * head_dim), (hidden, kv * head_dim)]
    ins_outs += [(heads * head_dim, hidden), (hidden, ffn), (hidden, ffn), (ffn, hidden)]
    return Counts(
        encoder=n(model.audio_encoder),
        audio_head=n(model.audio_adapter) + n(model.deepstack_audio_merger_list),
        embeddings=n(model.language_model.embed_tokens),
        lm_head=n(model.lm_head),
        layer=n(model.language_model.layers[0]),
        layers=language.num_hidden_layers,
        final_norm=n(model.language_model.norm),
        lora_layer=sum(lora_rank * (i + o) for i, o in ins_outs),
        shape={
            "hidden": hidden,
            "ffn": ffn,
            "q": heads * head_dim,
            "kv": kv * head_dim,
            "vocab": language.vocab_size,
            "d_enc": audio.d_model,
            "enc_ffn": audio.encoder_ffn_dim,
            "enc_layers": audio.encoder_layers,
            "stem": audio.downsample_hidden_size,
            "adapter": config.adapter_hidden_size,
            "mergers": config.num_deepstack_mergers,
            "lora_rank": lora_rank,
        },
    )


@dataclass(frozen=True)
class Plan:
    """Estimated bytes per rank (GPU) of one training configuration."""

    size: str
    decoder: str
    world_size: int
    seq_len: int
    micro_batch: int
    checkpointing: bool
    precision: str
    sharded: bool  # FSDP2 (world size > 1 by default); unsharded: one plain process
    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int  # in the mode asked for (checkpointing or not)
    activations_full: int  # without checkpointing
    activations_checkpointed: int  # with checkpointing
    early_gradients: int  # gradients that exist while every activation does (the head's)
    root: int  # the root unit's unsharded parameters (FSDP2 only; in `gathered` too)
    collectives: int  # the root's all-gather output, or its gradients' reduce-scatter buffers

    @property
    def moments(self) -> dict[str, int]:
        """Bytes beside the weights and optimizer states at the three points where a step
        peaks (measured on CPU: benchmarks/train.py): the root's all-gather at the start of
        forward (FSDP2 copies its output into the unsharded parameters, so both exist), the
        start of backward (every activation, the head's gradient), and the end of backward
        (every gradient, and the root's unsharded gradients with their reduce-scatter input)."""
        return {
            "forward": self.root + self.collectives,
            "start of backward": self.gathered + self.activations + self.early_gradients,
            "end of backward": self.root + self.gradients + self.collectives,
        }

    @property
    def total(self) -> int:
        """The per-rank peak: weights and optimizer states for the whole step, plus the
        largest moment."""
        return self.weights + self.optimizer + max(self.moments.values())

    def fits(self, gpu_gib: float = 80.0) -> bool:
        return self.total <= USABLE * gpu_gib * GIB

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _trainable(counts: Counts, decoder: str, train_encoder: bool) -> int:
    """Trainable parameters: the adapter and mergers always (the stage table), the encoder when
    it trains, the decoder (layers, embeddings, head) in full mode or its LoRA adapters."""
    trainable = counts.audio_head + (counts.encoder if train_encoder else 0)
    if decoder == "full":
        trainable += counts.embeddings + counts.lm_head + counts.final_norm
        return trainable + counts.layer * counts.layers
    return trainable + counts.lora_layer * counts.layers


def _norm(width: int, act: int, trains: bool) -> int:
    """Bytes an RMSNorm (model/qwen3.py) keeps per token: its fp32 upcast input (the input
    itself in fp32), the normalised x cast back when its weight trains; its output is counted
    by whoever keeps it (a projection's input)."""
    return width * (4 + (act if trains else 0))


def _layer_activations(s: dict[str, int], act: int, lora: bool) -> int:
    """Bytes autograd keeps per token for one decoder layer (model/qwen3.py DecoderLayer),
    counted tensor by tensor with saved-tensor hooks on CPU (benchmarks/train.py):

    - the two RMSNorms (`_norm`) and their outputs, the projections' shared input (2h);
    - q: the q_norm input, the rotary output and SDPA's output (o_proj's input is a view of
      it); k: the k_norm input and the rotary output; v (flash/efficient SDPA keeps no s x s
      matrix, only its log-sum-exp);
    - the gated MLP: gate, silu, up and their product (4f);
    - LoRA: x @ A^T of each of the seven projections (rank r); the frozen norms keep less."""
    h, q, kv, f = s["hidden"], s["q"], s["kv"], s["ffn"]
    trains = not lora  # the norms' weights train with the decoder, not under LoRA
    elements_act = 2 * h + 2 * q + 2 * kv + 4 * f + (7 * s["lora_rank"] if lora else 0)
    return (
        2 * _norm(h, act, trains)
        + _norm(q, act, trains)
        + _norm(kv, act, trains)
        + (elements_act * act)
    )


def _audio_activations(s: dict[str, int], act: int, audio_tokens: int, train_encoder: bool) -> int:
    """Bytes kept for the audio branch: adapter and mergers (input, gate, up, silu, product),
    and, when the encoder trains, its layers (9d + 2F per token) and conv stem (three
    conv + GELU outputs over the 128-bin mel at 100 Hz, 8 mel frames per audio token)."""
    d, adapter = s["d_enc"], s["adapter"]
    elements = (1 + s["mergers"]) * (d + 4 * adapter) * audio_tokens
    if train_encoder:
        elements += s["enc_layers"] * (9 * d + 2 * s["enc_ffn"]) * audio_tokens
        mel = 128 * 8 * audio_tokens
        elements += (
            mel + 2 * s["stem"] * mel * (1 / 4 + 1 / 16 + 1 / 64) + 16 * s["stem"] * audio_tokens
        )
    return int(elements * act)


def _head(s: dict[str, int], act: int, answer_tokens: int) -> int:
    """The vocabulary head at the start of backward, per answer token: the log-softmax output
    autograd keeps (fp32) and the two fp32 gradients its backward holds at once (of the
    log-probabilities and of the logits), plus the logits' own gradient in the compute dtype
    under bf16; the head's input (h)."""
    per_logit = 4 + 4 + 4 + (act if act != 4 else 0)
    return answer_tokens * (s["vocab"] * per_logit + s["hidden"] * act)


def _activations(
    counts: Counts, micro_batch: int, seq_len: int, audio_tokens: int, answer_tokens: int,
    precision: str, decoder: str, train_encoder: bool, checkpointing: bool,
) -> int:  # fmt: skip
    """Bytes of activations at the start of backward for one micro-batch of `micro_batch`
    examples of `seq_len` decoder positions (the attention mask is bool, B x s x s, shared)."""
    s = counts.shape
    act = 2 if precision == "bf16" else 4
    tokens = micro_batch * seq_len
    layer = _layer_activations(s, act, decoder == "lora") * tokens
    final_norm = (_norm(s["hidden"], act, decoder == "full")) * tokens
    head = _head(s, act, micro_batch * answer_tokens)
    audio = _audio_activations(s, act, micro_batch * audio_tokens, train_encoder)
    mask = micro_batch * seq_len * seq_len
    if checkpointing:  # each layer keeps its input; one is recomputed at a time, after the head
        inputs = counts.layers * s["hidden"] * act * tokens
        return inputs + final_norm + audio + mask + max(head, layer)
    return counts.layers * layer + final_norm + head + audio + mask


def _gathered(counts: Counts, decoder: str, trainable: int, sharded: bool, compute: int) -> int:
    """Unsharded copies a rank holds beside its shards.

    FSDP2: the root unit (encoder, adapter, mergers, embeddings, head) stays gathered for the
    whole step with its gradients (reduced once, at the end of backward), and two decoder
    layers (the one computing and the one prefetched) with one layer's gradients. One plain
    process in bf16: autocast's bf16 copies of the weights the backward multiplies by (decoder
    layers, head, adapter and mergers); in fp32 nothing."""
    unit = counts.layer + (counts.lora_layer if decoder == "lora" else 0)
    if not sharded:
        if compute == 4:
            return 0
        return compute * (unit * counts.layers + counts.lm_head + counts.audio_head)
    root = counts.encoder + counts.audio_head + counts.embeddings + counts.lm_head
    layer_trainable = unit if decoder == "full" else counts.lora_layer
    root_trainable = trainable - layer_trainable * counts.layers
    return (root + 2 * unit) * compute + (root_trainable + layer_trainable) * compute


def plan(
    size: str,
    decoder: str,
    world_size: int,
    seq_len: int,
    micro_batch: int,
    checkpointing: bool,
    *,
    precision: str = "bf16",
    train_encoder: bool = False,
    audio_tokens: int | None = None,
    answer_tokens: int | None = None,
    lora_rank: int = 8,
    sharded: bool | None = None,
) -> Plan:
    """The per-rank memory plan. `seq_len` is the decoder positions of one example (prompt,
    audio and answer); `audio_tokens` and `answer_tokens` per example default to half and a
    quarter of it. `sharded` defaults to FSDP2 above one process (one process runs plain, as
    `mossctl train` does without torchrun)."""
    if decoder not in ("full", "lora"):
        raise ValueError(f"decoder must be full or lora (got {decoder!r})")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if min(world_size, seq_len, micro_batch) < 1:
        raise ValueError("world_size, seq_len and micro_batch must be at least 1")
    sharded = world_size > 1 if sharded is None else sharded
    counts = count_parameters(size, lora_rank)
    audio = seq_len // 2 if audio_tokens is None else audio_tokens
    answers = seq_len // 4 if answer_tokens is None else answer_tokens
    total = counts.total + (counts.lora_layer * counts.layers if decoder == "lora" else 0)
    trainable = _trainable(counts, decoder, train_encoder)
    compute = 2 if precision == "bf16" else 4
    options = (micro_batch, seq_len, audio, answers, precision, decoder, train_encoder)
    full = _activations(counts, *options, checkpointing=False)
    checkpointed = _activations(counts, *options, checkpointing=True)
    head_trainable = counts.lm_head + counts.final_norm if decoder == "full" else 0
    root = counts.encoder + counts.audio_head + counts.embeddings + counts.lm_head
    layer_trainable = (counts.layer if decoder == "full" else counts.lora_layer) * counts.layers
    return Plan(
        size=size,
        decoder=decoder,
        world_size=world_size,
        seq_len=seq_len,
        micro_batch=micro_batch,
        checkpointing=checkpointing,
        precision=precision,
        sharded=sharded,
        parameters=total,
        trainable=trainable,
        weights=4 * total // world_size,
        gradients=4 * trainable // world_size,
        optimizer=8 * trainable // world_size,
        gathered=_gathered(counts, decoder, trainable, sharded, compute),
        activations=checkpointed if checkpointing else full,
        activations_full=full,
        activations_checkpointed=checkpointed,
        # sharded, the head's unsharded gradient is part of the gathered root
        early_gradients=0 if sharded else 4 * head_trainable,
        root=compute * root if sharded else 0,
        collectives=max(compute * root, (compute + 4) * (trainable - layer_trainable))
        if sharded
        else 0,
    )


def gpus_needed(
    size: str, decoder: str, seq_len: int, micro_batch: int, checkpointing: bool,
    gpu_gib: float = 80.0, most: int = 1024, **options: Any,
) -> int | None:  # fmt: skip
    """The smallest world size whose plan fits one GPU of `gpu_gib`; None if none up to `most`
    does (the activations or the gathered units alone exceed the GPU)."""
    for world in range(1, most + 1):
        if plan(size, decoder, world, seq_len, micro_batch, checkpointing, **options).fits(gpu_gib):
            return world
    return None


def table(
    sizes: tuple[str, ...] = ("4b", "8b"),
    decoders: tuple[str, ...] = ("full", "lora"),
    worlds: tuple[int, ...] = (1, 8, 16),
    *,
    seq_len: int = 2048,
    micro_batch: int = 1,
    checkpointing: bool = True,
    gpu_gib: float = 80.0,
    **options: Any,
) -> str:
    """A Markdown table of per-GPU GiB by size, mode and world size, and the GPUs each needs."""
    head = ["size", "decoder", "params", "trainable"]
    head += [f"{w} GPU{'s' if w > 1 else ''} (GiB)" for w in worlds] + [f"GPUs of {gpu_gib:g} GB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        for decoder in decoders:
            plans = [plan(size, decoder, w, seq_len, micro_batch, checkpointing, **options)
                     for w in worlds]  # fmt: skip
            cells = [size, decoder, f"{plans[0].parameters / 1e9:.2f}B"]
            cells.append(f"{plans[0].trainable / 1e9:.3f}B")
            for one in plans:
                fits = "" if one.fits(gpu_gib) else " (no)"
                cells.append(f"{one.total / GIB:.1f}{fits}")
            need = gpus_needed(size, decoder, seq_len, micro_batch, checkpointing, gpu_gib,
                               **options)  # fmt: skip
            cells.append(str(need) if need else "none")
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def breakdown(one: Plan) -> str:
    """A plan's parts in GiB, one per line (what `mossctl train --plan` prints)."""
    parts = [
        ("weights (sharded)", one.weights),
        ("gradients (sharded)", one.gradients),
        ("optimizer states (sharded)", one.optimizer),
        ("gathered units", one.gathered),
        ("activations without checkpointing", one.activations_full),
        ("activations with checkpointing", one.activations_checkpointed),
    ]
    mode = "FSDP2" if one.sharded else "one process"
    lines = [
        f"{one.size} {one.decoder}: {one.parameters / 1e9:.3f}B parameters, "
        f"{one.trainable / 1e9:.3f}B trainable; world size {one.world_size} ({mode}), "
        f"seq {one.seq_len}, micro-batch {one.micro_batch}, {one.precision}"
    ]
    lines += [f"  {name:<36} {value / GIB:8.2f} GiB" for name, value in parts]
    moment = max(one.moments, key=one.moments.__getitem__)
    checkpointing = "with" if one.checkpointing else "without"
    lines.append(
        f"  {'peak per GPU (' + checkpointing + ' checkpointing)':<36} {one.total / GIB:8.2f} GiB"
        f"  (at the {moment})"
    )
    return "\n".join(lines)
