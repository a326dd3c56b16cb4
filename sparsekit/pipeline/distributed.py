"""Calibration split across processes (torchrun) with torch.distributed.

Rank r takes the calibration batches r, r+W, r+2W, … of the single-process batching, so every batch
is computed exactly as in one process. Per-layer statistics (fp64 sums) are all-reduced before
masks are computed; every rank then derives the same masks, so results equal the single-process run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str | None) -> str | None:
    """Initialise the process group when launched by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def shard_batches(input_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This rank's calibration sequences: batches rank, rank+W, … of size batch_size."""
    rank, size = world()
    if size == 1:
        return input_ids
    batches = list(torch.split(input_ids, batch_size))
    if len(batches) < size:
        raise ValueError(
            f"{len(batches)} calibration batches cannot be split across {size} processes; "
            f"use more samples (--nsamples) or a smaller --batch-size"
        )
    return torch.cat(batches[rank::size])


def all_reduce_states(states: list[dict[str, torch.Tensor]]) -> None:
    """Sum every tensor of every state across ranks, in place, in a fixed order."""
    if world()[1] == 1:
        return
    for state in states:
        for key in sorted(state):
            dist.all_reduce(state[key], op=dist.ReduceOp.SUM)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
