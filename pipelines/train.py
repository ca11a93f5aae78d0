"""Training MossAudioModel: pretraining and SFT stages over a dataset manifest.

Stages decide what trains and on which targets:

| stage | encoder | adapter, mergers | decoder | targets |
|---|---|---|---|---|
| `pretrain` | trains | train | full | time-aware: transcripts, timed lists, starts, captions |
| `sft` (Instruct) | frozen | train | full or LoRA | every kind (services.core.sft.KINDS) |
| `sft_thinking` | frozen | train | full or LoRA | QA answers after a `<think>` trace |

Examples come from each clip's labels (services.core.sft.build_examples), so a manifest trains
on whichever families it has; kinds outside the stage's list are left out, and the run logs
how many examples of each kind it kept. The loss covers answer tokens only (the model's head
runs only where labels are set).
One loop trains in one process or in every process of a torchrun world (FSDP2,
pipelines/distributed.py): `batch_size` is the global batch of an optimizer step, each rank
takes its slice of the same seeded epoch order, and the loss is normalised by the answer tokens
of the whole global batch, so a run's losses and weights do not depend on its world size.
Checkpoints (pipelines/dcp.py) are the released format (config.json + safetensors, plus the
tokenizer) and, under `resume/`, Distributed Checkpoint shards with the step, optimizer,
scheduler and RNG, so a resumed run continues exactly where it stopped, at any world size.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model import MossAudioModel, MossAudioProcessor, log_mel_spectrogram
from model.audio_sandbox import load_audio_isolated
from model.batching import pad_mels
from model.encoder import num_audio_tokens
from model.processor import default_prompt
from model.tasks import instruction_for
from model.tokens import ENDOFTEXT_ID, IM_END_ID
from services.core import progress
from services.core.sft import KINDS, build_examples

from .dcp import STATE_FILE as STATE_FILE  # where a checkpoint keeps its resume state
from .dcp import export_release, load_resume, save_resume
from .distributed import Dist, checkpoint_layers, peak_memory_bytes, reset_peak_memory, shard
from .lora import add_lora

STAGES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "train_encoder": True,
        "decoder": "full",
        "kinds": ("transcript", "segments", "timestamps", "event_start", "caption"),
    },
    "sft": {"train_encoder": False, "decoder": "full", "kinds": KINDS},
    "sft_thinking": {
        "train_encoder": False,
        "decoder": "full",
        "kinds": ("event_at", "event_start", "count"),
    },
}
# Kinds whose answers describe the whole clip: last in a conversation (see Examples).
LONG_ANSWERS = ("caption", "timestamps", "transcript", "segments")


@dataclass
class TrainConfig:
    stage: str = "sft"
    steps: int = 100
    batch_size: int = 8  # the global batch: examples per optimizer step, over every rank
    micro_batch: int = 0  # examples per forward on one rank; 0: the rank's whole slice
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    train_encoder: bool | None = None  # None: the stage's default
    train_adapter: bool = True  # False freezes the adapter and the DeepStack mergers too
    activation_checkpointing: bool = False  # per decoder layer: recompute instead of keeping
    decoder: str | None = None  # full | lora | frozen; None: the stage's default
    lora_rank: int = 8
    mixed_precision: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | no
    seed: int = 0
    checkpoint_every: int = 0
    kinds: tuple[str, ...] | None = None
    # How often each kind of example is shown per epoch (1: once); None: every example once.
    kind_weights: dict[str, float] | None = None
    # Overrides the model's dropout rates for this run (None: keep the config's). A model trained
    # from scratch on a time budget underfits; dropout then only slows it down.
    dropout: float | None = None
    # Run the training softmax over the tokens the targets use only, not the whole vocabulary
    # (on the tiny model the 151,936-row head is most of a step's cost). The untrained rows stay
    # at their small initial values, far below the trained ones: fine for a model trained on
    # narrow data only (the bootstrap model); not for fine-tuning a released checkpoint.
    vocab_shortlist: bool = False
    # Each example opens a multi-turn conversation with the clip's other examples (see
    # Examples): one pass over the audio trains several answers.
    conversations: bool = False
    # A time budget (0: none). The learning-rate schedule then follows whichever runs out first,
    # steps or time, so a run cut by the clock still ends with its low-rate annealing phase
    # (on the tiny model that phase is the difference between chance and >90 % event QA).
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}")
        defaults = STAGES[self.stage]
        self.train_encoder = (
            defaults["train_encoder"] if self.train_encoder is None else self.train_encoder
        )
        self.decoder = self.decoder or defaults["decoder"]
        self.kinds = tuple(self.kinds or defaults["kinds"])
        if self.decoder not in ("full", "lora", "frozen"):
            raise ValueError("decoder must be full, lora or frozen")


# --- examples ------------------------------------------------------------------------------


@dataclass
class Example:
    clip: int  # index into Examples.mels
    input_ids: list[int]
    labels: list[int]
    kind: str
    answer: str
    prompt_ids: list[int] = field(repr=False, default_factory=list)


def thinking_trace(events: list[dict[str, Any]]) -> str:
    """A short reasoning trace from the clip's events, for Thinking-style targets."""
    heard = "; ".join(f"{e['label']} from {e['start']:.1f} s to {e['end']:.1f} s" for e in events)
    return f"I hear {len(events)} event(s): {heard}."


class Examples:
    """Tokenized examples of one split, with each clip's mel computed once.

    With `conversations`, every example opens a multi-turn conversation that goes on with the
    clip's other examples (one audio, loss on every answer): the clip's audio tokens, most of a
    sequence, then train several answers instead of one. Each example opens one conversation,
    so every kind is trained as a first turn, the shape inference sees; the other turns follow
    in a random order, questions before captions and timestamp lists, and no question after a
    caption or a timestamp list, so that answers are read from the audio, not copied from an
    earlier turn's text.
    """

    def __init__(
        self,
        clips: list[dict[str, Any]],
        read_audio: Callable[[str], bytes],
        processor: MossAudioProcessor,
        kinds: tuple[str, ...],
        split: str,
        thinking: bool = False,
        conversations: bool = False,
        seed: int = 0,
    ) -> None:
        self.mels: list[torch.Tensor] = []
        self.items: list[Example] = []
        self.clips: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []  # (clip id, why): audio that would not decode
        self.tokenizer = processor.tokenizer
        rng = random.Random(seed)
        for clip in (c for c in clips if c.get("split", "train") == split):
            try:  # a team's audio is decoded in the sandbox, like an upload
                mel = log_mel_spectrogram(load_audio_isolated(read_audio(clip["audio"])))
            except (ValueError, KeyError, OSError) as exc:
                self.skipped.append((str(clip.get("id", clip["audio"])), str(exc)))
                print(f"clip {self.skipped[-1][0]}: skipped ({exc})", flush=True)
                continue
            index = len(self.clips)
            self.clips.append(clip)
            self.mels.append(mel)
            tokens = int(num_audio_tokens(mel.shape[-1]))
            turns = []
            for example in build_examples(clip, random.Random(f"{seed}:{clip['id']}")):
                if example["kind"] not in kinds:
                    continue
                instruction = instruction_for(example["task"], example["prompt"] or None)
                target = example["answer"]
                if thinking and clip.get("events"):
                    target = f"<think>\n{thinking_trace(clip['events'])}\n</think>\n\n{target}"
                turns.append((example, instruction, self._answer_ids(target)))
            if not conversations:
                for example, instruction, answer_ids in turns:
                    prompt_ids = processor.encode_prompt(default_prompt(instruction), [tokens])
                    self.items.append(
                        Example(
                            clip=index,
                            input_ids=prompt_ids + answer_ids,
                            labels=[-100] * len(prompt_ids) + answer_ids,
                            kind=example["kind"],
                            answer=example["answer"],
                            prompt_ids=prompt_ids,
                        )
                    )
            else:
                for first in range(len(turns)):
                    rest = turns[:first] + turns[first + 1 :]
                    self.items.append(
                        self._conversation(index, turns[first], rest, tokens, processor, rng)
                    )

    def _answer_ids(self, target: str) -> list[int]:
        return [*self.tokenizer.encode(target, add_special_tokens=False), IM_END_ID]

    def _conversation(self, index, first, rest, tokens, processor, rng) -> Example:
        questions = [t for t in rest if t[0]["kind"] not in LONG_ANSWERS]
        if first[0]["kind"] in LONG_ANSWERS:  # a caption already gives the answers away
            questions = []
        descriptions = [t for t in rest if t[0]["kind"] in LONG_ANSWERS]
        rng.shuffle(questions)
        rng.shuffle(descriptions)
        input_ids: list[int] = []
        labels: list[int] = []
        opening: list[int] = []
        for n, (_, instruction, answer_ids) in enumerate([first, *questions, *descriptions]):
            if n == 0:
                opening = processor.encode_prompt(default_prompt(instruction), [tokens])
                prompt_ids = opening
            else:  # the newline after the previous <|im_end|>, then the next user turn
                text = f"\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
                prompt_ids = processor.encode_prompt(text, [])
            input_ids += prompt_ids + answer_ids
            labels += [-100] * len(prompt_ids) + answer_ids
        kind, answer = first[0]["kind"], first[0]["answer"]
        return Example(index, input_ids, labels, kind, answer, prompt_ids=opening)

    def __len__(self) -> int:
        return len(self.items)

    def kind_counts(self) -> dict[str, int]:
        """How many examples of each kind were kept (logged with every run)."""
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        return dict(sorted(counts.items()))

    def batch(self, items: list[Example]) -> dict[str, torch.Tensor]:
        """Right-padded ids/labels and zero-padded mel for a list of examples."""
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), ENDOFTEXT_ID, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, example in enumerate(items):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        audio, lengths = pad_mels([self.mels[e.clip] for e in items])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "audio_data": audio,
            "audio_data_seqlens": lengths,
        }


def batches(
    examples: Examples,
    batch_size: int,
    seed: int,
    start: int = 0,
    kind_weights: dict[str, float] | None = None,
) -> Iterator[list[Example]]:
    """An endless, reproducible stream of batches: epoch e shuffles with seed + e.

    `kind_weights` resamples each epoch by kind: 2.0 shows every example of that kind twice,
    0.5 shows a random half of them (missing kinds weigh 1).
    """
    produced = 0
    epoch = 0
    while True:
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(epoch_indices(examples, rng, kind_weights))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            if produced >= start:
                yield [examples.items[i] for i in order[first : first + batch_size]]
            produced += 1
        epoch += 1


def epoch_indices(
    examples: Examples, rng: np.random.Generator, kind_weights: dict[str, float] | None
) -> np.ndarray:
    if not kind_weights:
        return np.arange(len(examples))
    weights = np.array([kind_weights.get(e.kind, 1.0) for e in examples.items])
    copies = np.floor(weights).astype(int) + (rng.random(len(weights)) < weights % 1.0)
    return np.repeat(np.arange(len(examples)), copies)


# --- what trains ---------------------------------------------------------------------------


def configure_trainable(model: MossAudioModel, config: TrainConfig) -> list[nn.Parameter]:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.train_adapter:
        for module in (model.audio_adapter, model.deepstack_audio_merger_list):
            module.requires_grad_(True)
    if config.train_encoder:
        model.audio_encoder.requires_grad_(True)
    if config.decoder == "full":
        model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    elif config.decoder == "lora":
        add_lora(model.language_model, rank=config.lora_rank)  # adapters train, base frozen
    return [p for p in model.parameters() if p.requires_grad]


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout rate in the model (encoder and decoder attention, residual, activation)."""
    for module in model.modules():
        for name in ("dropout", "activation_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    mode = config.mixed_precision
    if mode == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --- the loop ------------------------------------------------------------------------------


class StepReport:
    """The trainer's progress for people and for the pipeline worker: every `every` steps, the
    first and the last, a line `step 50/200 loss 1.234 lr 3e-04 eta 42s` and a progress line
    (core.progress: step, total_steps, loss, lr, eta_s). The ETA is the mean step time so far
    times the steps left, or the time budget left if that is shorter."""

    def __init__(self, total: int, max_seconds: float = 0.0, every: int = 10, stream=None):
        self.total, self.max_seconds, self.every, self.stream = total, max_seconds, every, stream
        self.started = time.monotonic()
        self.first: int | None = None  # a resumed run starts past 0

    def eta(self, step: int) -> float:
        elapsed = time.monotonic() - self.started
        done = step - (self.first or 1) + 1
        left = elapsed / max(1, done) * max(0, self.total - step)
        if self.max_seconds:
            left = min(left, max(0.0, self.max_seconds - elapsed))
        return round(left, 1)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.first = step if self.first is None else self.first
        if step % self.every and step not in (1, self.first, self.total):
            return
        self.emit(step, metrics["loss"], metrics.get("lr"))

    def finish(self, step: int, loss: float) -> None:
        """The last step, when the clock (or a stop) ended training before `total`."""
        if step and step % self.every and step != self.total:
            self.emit(step, loss, None, eta=0.0)

    def emit(self, step: int, loss: float, lr: float | None, eta: float | None = None) -> None:
        eta = self.eta(step) if eta is None else eta
        shown = f" lr {lr:.2e}" if lr is not None else ""
        print(f"step {step}/{self.total} loss {loss:.3f}{shown} eta {eta:.0f}s",
              file=self.stream, flush=True)  # fmt: skip
        progress.emit(self.stream, step=step, total_steps=self.total, loss=round(loss, 5),
                      lr=lr, eta_s=eta)  # fmt: skip


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]  # the global batch's loss at each optimizer step of this run
    grad_norms: list[float] = field(default_factory=list)  # before clipping, global
    world_size: int = 1
    samples: int = 0  # examples trained on by all ranks in this run
    tokens: int = 0  # non-padding positions of those examples
    seconds: float = 0.0  # the loop's wall time (loading and the final export excluded)
    peak_memory: list[int] = field(default_factory=list)  # bytes, one per rank


@dataclass
class _Clock:
    """The time budget as every rank sees it: rank-local clocks differ a little, so the share
    of the budget used is averaged over the ranks each step and every rank schedules the same
    learning rate and stops at the same step."""

    max_seconds: float
    started: float = field(default_factory=time.monotonic)
    share: float = 0.0

    def local_share(self) -> float:
        return (time.monotonic() - self.started) / self.max_seconds if self.max_seconds else 0.0


def train(
    model: MossAudioModel,
    examples: Examples,
    config: TrainConfig,
    output_dir: Path | None = None,
    processor: MossAudioProcessor | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    world: Dist | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train in place (under FSDP2 when `world` is a torchrun process group). With `resume`,
    continue from the resume state in `resume_from` (default `output_dir`).

    Every rank calls this with the same arguments. The global batch is `config.batch_size`
    examples; each rank takes its slice of it, in micro-batches of `config.micro_batch`."""
    world = world or Dist(device=next(model.parameters()).device)
    per_rank = _per_rank(config, world, len(examples))
    params = _prepare(model, config, world)
    device = world.device
    fused = device.type in ("cpu", "cuda")  # one pass over every tensor: ~10 % of a tiny step
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
    )
    clock = _Clock(config.max_seconds)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, clock))
    start = 0
    if resume:
        start = load_resume(resume_from or output_dir, model, optimizer, scheduler, config, world)
    else:
        _seed_everything(config.seed)
    label_vocab = None
    if config.vocab_shortlist:
        used = sorted({t for e in examples.items for t in e.labels if t != -100})
        label_vocab = torch.tensor(used, dtype=torch.long, device=device)
    stream = batches(examples, config.batch_size, config.seed, start, config.kind_weights)
    mixed = _autocast(config, device) if not world.sharded else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(
        enabled=config.mixed_precision == "fp16" and device.type == "cuda" and not world.sharded
    )
    micro = config.micro_batch or per_rank
    result = TrainResult(steps=start, final_loss=float("nan"), losses=[],
                         world_size=world.world_size)  # fmt: skip
    reset_peak_memory(device)
    model.train()
    for step in range(start, config.steps):
        mine = next(stream)[world.rank * per_rank : (world.rank + 1) * per_rank]
        chunks = [mine[i : i + micro] for i in range(0, per_rank, micro)]
        loss, norm, samples, tokens = _step(
            model, examples, chunks, (optimizer, scaler), params, config, world, mixed,
            label_vocab, clock,
        )  # fmt: skip
        scheduler.step()
        result.losses.append(loss)
        result.grad_norms.append(norm)
        result.samples += samples
        result.tokens += tokens
        if on_step is not None:
            on_step(step + 1, {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": norm})
        stop = bool(should_stop()) if should_stop is not None else False
        (votes,) = world.all_sum([float(stop)])  # one rank asked to stop: all stop here
        done = step + 1 == config.steps or clock.share >= 1.0 or votes > 0
        result.steps = step + 1
        if output_dir is not None and (
            done or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)
        ):
            save_resume(output_dir, model, optimizer, scheduler, step + 1, config, world)
        if done:
            break
    result.seconds = time.monotonic() - clock.started
    if output_dir is not None:
        export_release(output_dir, model, processor, world, dtype=_release_dtype(config, world))
    model.eval()
    result.final_loss = result.losses[-1] if result.losses else float("nan")
    result.peak_memory = [int(b) for b in world.gather(peak_memory_bytes(device))]
    return result


def _per_rank(config: TrainConfig, world: Dist, examples: int) -> int:
    """Each rank's share of the global batch; ValueError when it cannot be split evenly."""
    if examples < config.batch_size:
        raise ValueError(f"{examples} examples: fewer than one batch of {config.batch_size}")
    if config.batch_size % world.world_size:
        raise ValueError(
            f"batch size {config.batch_size} is not a multiple of the world size "
            f"{world.world_size}: every rank takes an equal slice of the global batch"
        )
    per_rank = config.batch_size // world.world_size
    if config.micro_batch and per_rank % config.micro_batch:
        raise ValueError(
            f"micro-batch {config.micro_batch} does not divide a rank's {per_rank} examples"
        )
    return per_rank


def _prepare(model: MossAudioModel, config: TrainConfig, world: Dist) -> list[nn.Parameter]:
    """What trains (stage, freeze flags, LoRA), dropout, activation checkpointing, then FSDP2
    under torchrun; returns the trainable parameters (sharded DTensors under FSDP2)."""
    params = configure_trainable(model, config)
    if not params:
        raise ValueError("nothing to train: the encoder, the adapter and the decoder are frozen")
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    if config.activation_checkpointing:
        checkpoint_layers(model)
    if not world.sharded:
        return params
    mixed = world.device.type == "cuda" and config.mixed_precision in ("auto", "bf16")
    shard(model, world, mixed_precision=mixed)
    return [p for p in model.parameters() if p.requires_grad]


def _schedule(config: TrainConfig, clock: _Clock) -> Callable[[int], float]:
    def schedule(step: int) -> float:  # linear warm-up, then cosine to 10 %
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        progress = max(progress, clock.share)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def _step(model, examples, chunks, optimizers, params, config, world, mixed, label_vocab, clock):
    """One optimizer step over this rank's micro-batches. The loss is normalised by the answer
    tokens of the whole global batch (an all-reduce of the count), so summing the ranks'
    gradients (pipelines.distributed.shard) gives the global batch's gradient at any world
    size. Returns (global loss, global gradient norm before clipping, samples, tokens), and
    sets the clock's share of the time budget to the ranks' mean."""
    device = world.device
    prepared = [{k: v.to(device) for k, v in examples.batch(chunk).items()} for chunk in chunks]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in prepared]
    answer_tokens, samples, tokens = world.all_sum(
        [
            sum(counts),
            sum(len(c) for c in chunks),
            sum(int(b["attention_mask"].sum()) for b in prepared),
        ]
    )
    optimizer, scaler = optimizers
    optimizer.zero_grad(set_to_none=True)
    local = 0.0
    for batch, count in zip(prepared, counts, strict=True):
        with mixed:
            mean = model(**batch, label_vocab=label_vocab).loss
        loss = mean * (count / max(answer_tokens, 1.0))  # this micro-batch's share
        scaler.scale(loss).backward()
        local += float(loss.detach())
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    scaler.step(optimizer)
    scaler.update()
    loss_sum, shares = world.all_sum([local, clock.local_share()])
    clock.share = shares / world.world_size
    return loss_sum, norm, int(samples), int(tokens)


def _release_dtype(config: TrainConfig, world: Dist) -> torch.dtype | None:
    """bf16 for a CUDA run in bf16 (the released checkpoints' dtype), else as trained."""
    cuda_bf16 = world.device.type == "cuda" and config.mixed_precision in ("auto", "bf16")
    return torch.bfloat16 if cuda_bf16 and world.sharded else None


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
