"""Training under ``torchrun``: PyTorch DDP across processes and machines, nothing home-made.

``mousesegment train mosnet|unet`` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK).
In one process every helper here is a no-op, so the trainers have one code path. Under torchrun:
NCCL on CUDA (one GPU per process, by LOCAL_RANK) or gloo on the CPU; each process trains on its
own shard of every epoch (torch's DistributedSampler) with ``--batch-size`` samples per step, so
the global batch is the number of processes times that. Rank 0 alone logs, validates and writes
weights, checkpoints and curves; the others receive its validation figures, so every rank takes
the same decisions (best epoch, early stop, learning-rate drops, stopping).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..models.preprocess import pick_device

#: How long a rank waits for the others before the run fails (a dead peer, a hung collective).
TIMEOUT = timedelta(minutes=float(os.environ.get("MOUSESEGMENT_DIST_TIMEOUT_MIN", "10")))


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device_name: str) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group when launched by it; the device this process trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        device = torch.device("cuda", ranks.local_rank)
    if not dist.is_initialized():
        # NCCL carries the gradients; gloo the small CPU tensors of the agreements and figures.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return ranks, device


def main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or not under torchrun at all."""
    return int(os.environ.get("RANK", "0")) == 0


def finish() -> None:
    """Leave the process group (after training, or when it failed).

    The training objects are collected first: a DDP module left in a reference cycle still holds
    the group, whose gloo threads would then stop in the interpreter's teardown instead of here,
    and a torchrun rank stopped there can abort (SIGABRT) after its work is done."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module to train: DDP around ``model`` under torchrun (it averages the gradients)."""
    if not ranks.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def epoch_order(n: int, epoch: int, seed: int, ranks: Ranks) -> np.ndarray:
    """This rank's shuffled share of ``n`` samples for an epoch; the shares are disjoint and of
    equal length (a few samples repeat to even them out), the same for any run with the same seed."""
    sampler = DistributedSampler(range(n), num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)


def weighted_order(weights: np.ndarray, epoch: int, seed: int, ranks: Ranks) -> np.ndarray:
    """This rank's share of an epoch of ``len(weights)`` samples drawn with replacement, each in
    proportion to its weight; the shares are disjoint slices of one draw, the same for any run with
    the same seed, and of equal length."""
    p = np.asarray(weights, dtype=np.float64)
    draws = np.random.default_rng([seed % 2**32, epoch]).choice(  # any --seed, negative too
        len(p), -(-len(p) // ranks.world) * ranks.world, p=p / p.sum())
    return draws[ranks.rank::ranks.world]


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, ranks: Ranks,
                  weights: np.ndarray | None = None) -> list[np.ndarray]:
    """This rank's share of an epoch in batches of ``batch_size`` sample indices: a shuffle of the
    ``n`` samples (:func:`epoch_order`), or a weighted draw (:func:`weighted_order`) when ``weights``
    are given."""
    order = epoch_order(n, epoch, seed, ranks) if weights is None else weighted_order(weights, epoch, seed, ranks)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def sum_over_ranks(values: list[float], ranks: Ranks) -> list[float]:
    """Element-wise sums of per-rank figures (losses, counts)."""
    if not ranks.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def agree_stop(reason: str | None, ranks: Ranks) -> str | None:
    """Stop on every rank when any rank must stop (a cancel, --max-minutes), so none waits alone
    in a gradient exchange."""
    if not ranks.distributed:
        return reason
    flag = torch.tensor([reason is not None], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return reason or ("stopped by another rank" if flag.item() else None)


def from_main(make: Callable[[], Any], ranks: Ranks) -> Any:
    """Run ``make`` on rank 0 alone and hand its JSON-able result to every rank (validation
    figures). Sent as JSON text, never pickled."""
    value = make() if ranks.main else None
    if not ranks.distributed:
        return value
    data = json.dumps(value).encode() if ranks.main else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if ranks.main else torch.empty(
        int(size.item()), dtype=torch.uint8)
    dist.broadcast(buffer, src=0)
    return value if ranks.main else json.loads(bytes(buffer.tolist()).decode())


def same_as_main(value: Any, what: str, ranks: Ranks) -> None:
    """Stop with a clear error when this rank sees ``value`` differently from rank 0, e.g. the epoch
    of a checkpoint that each rank reads from a filesystem that should be shared."""
    main_value = from_main(lambda: value, ranks)
    if main_value != value:
        from .checkpoint import TrainingError

        raise TrainingError(f"rank {ranks.rank} sees {what} {value!r}, rank 0 sees {main_value!r}: every node "
                            "must see the same output folder (a shared filesystem)")


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
