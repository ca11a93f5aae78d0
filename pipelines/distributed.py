"""One training process among several: the process group, the device mesh, FSDP2 sharding.

`mossctl train --nproc-per-node N` runs N of these under torchrun (pipelines/distributed_run.py);
a single process without torchrun gets a `Dist` of world size 1 and no process group, and the
same training loop (pipelines/train.py) runs unchanged.

Sharding is PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`): one unit per Qwen3 decoder
layer, then the root (encoder, adapter, DeepStack mergers, embeddings, head), on an explicit
1-D mesh. Why FSDP2 and not DeepSpeed: it is part of torch (no extra dependency, no config
file), it keeps parameter names (a checkpoint's names are the model's), and Distributed
Checkpoint (pipelines/dcp.py) saves and reshards its DTensors natively.

Gradients are SUMMED across ranks, never averaged: every rank's loss is already its share of
the global batch (its token losses divided by the global batch's answer-token count), so the
sum is the gradient of the global loss. This also sidesteps pytorch#162338 (on gloo, FSDP2's
AVG reduction silently sums): FSDP2 is told to divide by 1 with SUM-only collectives.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# How long a rank waits for the others in one collective before it fails the run (a peer that
# died is seen at once on its closed socket; this only bounds a peer that hangs).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass
class Dist:
    """Where this process stands: its rank, the world size, its device, the mesh to shard on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: Any = None  # a DeviceMesh under torchrun, else None (no sharding)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that logs, prints progress and writes the release layout."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def all_sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of `values` over every rank (float64: token counts stay exact)."""
        if not self.sharded:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, value: float) -> list[float]:
        """One number from every rank, in rank order (on every rank)."""
        if not self.sharded:
            return [value]
        out = [
            torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.world_size)
        ]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [float(t.item()) for t in out]

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a path, a run id, a small record)."""
        if not self.sharded:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every worker it starts."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init() -> Dist:
    """The process group from torchrun's environment (gloo on CPU, NCCL on CUDA) and its mesh,
    or a world of one when not under torchrun."""
    cuda = torch.cuda.is_available()
    if not under_torchrun():
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    from torch.distributed.device_mesh import init_device_mesh

    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    world = dist.get_world_size()
    device_type = "cuda" if cuda else "cpu"
    return Dist(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=local_rank,
        device=torch.device(device_type, local_rank) if cuda else torch.device("cpu"),
        mesh=init_device_mesh(device_type, (world,)),
    )


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --- sharding -------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    return list(model.language_model.layers)


def checkpoint_layers(model: nn.Module) -> None:
    """Activation checkpointing per decoder layer: a layer keeps only its input for backward and
    recomputes the rest. The composable API (hooks, no wrapper module) keeps parameter names.
    DeepStack's injection is applied by the decoder between layers, outside the recomputed
    region, so a recomputed layer sees the same injected input (tests check the gradients)."""
    from torch.distributed._composable import checkpoint

    for layer in decoder_layers(model):
        checkpoint(layer)


def shard(model: nn.Module, world: Dist, mixed_precision: bool) -> nn.Module:
    """FSDP2 in place: each decoder layer its own unit, then the root. `mixed_precision` (CUDA):
    bf16 parameters for compute, fp32 gradient reduction, fp32 sharded master weights."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {"mesh": world.mesh}
    if mixed_precision:
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # sum, never average (see the module docstring)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU (a collective for a sharded DTensor: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


# --- measuring ------------------------------------------------------------------------------


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak: CUDA memory allocated on its device, else its peak resident set
    (CPU: everything the process held, the model, Python and the data included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
