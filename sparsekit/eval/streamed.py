"""Where a model's blocks live while it is evaluated: `placement_for` picks how `perplexity(..., placement=)`
streams a model that is not wholly on the device (offloaded to CPU memory, or on the meta device and read
from disk block by block).
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekit.hf.blocks import find_blocks
from sparsekit.pipeline.checkpoint import RunCheckpoint
from sparsekit.pipeline.placement import CPUOffload, DiskStream, Placement


def placement_for(model: nn.Module, device, run_dir=None) -> Placement | None:
    """None when every parameter already sits on `device` (evaluate the whole model at once); otherwise
    the placement that streams the blocks to `device`: from the pruning run's checkpoint `run_dir` or the
    model's own safetensors for a model on the meta device (disk offload), from CPU memory otherwise."""
    device = torch.device(device)
    params = list(model.parameters())
    if all(p.device == device or (p.device.type == device.type == "cpu") for p in params):
        return None
    if not any(p.is_meta for p in params):
        return CPUOffload(device)
    dtype = next(p.dtype for p in params if p.is_floating_point())
    if run_dir:
        return RunCheckpoint(run_dir, {}).streamer(device, dtype)
    block_path, _ = find_blocks(model)
    return DiskStream.from_checkpoint(model.name_or_path, block_path, device, dtype)
