"""Where blocks live between their turns, and how each reaches the accelerator for its turn.

- `Resident`: every block already sits on the device.
- `CPUOffload`: blocks wait in CPU memory; one at a time moves to the device and back.
- `DiskStream`: blocks are never all materialised. The model skeleton holds them on the meta device;
  a block's tensors are read from safetensors files (lazily, `safe_open`) straight onto the device for
  its turn and dropped afterwards (the run checkpoint keeps the pruned tensors).
`plan_placement` picks one from the model size, the calibration buffer and a GPU memory budget.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sparsekit.hf.safetensors_io import SafetensorsIndex, materialise

log = logging.getLogger(__name__)
GiB = 1024**3


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's materialised parameters are (CPU when every one is on the meta device)."""
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


def on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@contextmanager
def on_device(modules: list[nn.Module], device: torch.device):
    """Move modules to `device` for the duration, then back where each was."""
    homes = [module_device(m) for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)


def non_block_modules(model: nn.Module, blocks: nn.ModuleList) -> list[nn.Module]:
    """The smallest set of submodules covering every parameter/buffer outside the blocks."""
    inside = {id(m) for m in blocks.modules()}
    out = []

    def visit(module):
        for child in module.children():
            if child is blocks:
                continue
            if any(id(d) in inside for d in child.modules()):
                visit(child)
            else:
                out.append(child)

    visit(model)
    return out


class Placement:
    name = "resident"

    def onload(self, index: int, block: nn.Module) -> None:
        pass

    def offload(self, index: int, block: nn.Module) -> None:
        pass


class Resident(Placement):
    pass


class CPUOffload(Placement):
    name = "cpu-offload"

    def __init__(self, device: torch.device):
        self.device = device
        self._homes: dict[int, torch.device] = {}

    def onload(self, index, block):
        self._homes[index] = module_device(block)
        block.to(self.device)

    def offload(self, index, block):
        block.to(self._homes.pop(index, torch.device("cpu")))


def block_tensor_names(block: nn.Module) -> list[str]:
    """Names of a block's parameters and persistent buffers (what a checkpoint stores)."""
    return list(block.state_dict(keep_vars=True).keys())


class DiskStream(Placement):
    """`load_block(index, names, device) -> {name: tensor}` supplies each block's tensors for its turn."""

    name = "disk-stream"

    def __init__(self, load_block, device: torch.device, dtype: torch.dtype | None = None):
        self.load_block, self.device, self.dtype = load_block, device, dtype

    @classmethod
    def from_checkpoint(cls, directory, block_path: str, device, dtype=None) -> "DiskStream":
        """Stream blocks from an HF safetensors checkpoint whose tensor names match the model's."""
        index = SafetensorsIndex(directory)

        def load_block(i, names, dev):
            tensors = index.load([f"{block_path}.{i}.{n}" for n in names], dev)
            return {n: tensors[f"{block_path}.{i}.{n}"] for n in names}

        return cls(load_block, device, dtype)

    def onload(self, index, block):
        materialise(block, self.load_block(index, block_tensor_names(block), self.device), self.device, self.dtype)

    def offload(self, index, block):
        block.to("meta")


@dataclass
class PlacementPlan:
    placement: Placement
    activations_device: torch.device
    pin_activations: bool
    notes: str

    def describe(self) -> str:
        where = f"{self.activations_device}{' (pinned)' if self.pin_activations else ''}"
        return f"blocks: {self.placement.name}; calibration activations on {where}; {self.notes}"


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


def _meta_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return sum(p.numel() * (p.element_size() if not p.is_meta else itemsize) for p in module.parameters())


def plan_placement(model: nn.Module, blocks: nn.ModuleList, block_path: str, nsamples: int, seqlen: int,
                   device: torch.device, offload: str = "auto", max_gpu_memory: float | None = None,
                   needs_hessian: bool = False) -> PlacementPlan:
    """Choose block placement and where calibration activations live for a memory budget (GiB).
    `offload` is PruneConfig.offload (validated there)."""
    dtype = next((p.dtype for p in blocks.parameters() if p.is_floating_point()), torch.float32)
    hidden = model.config.hidden_size
    act_bytes = nsamples * seqlen * hidden * torch.empty(0, dtype=dtype).element_size()
    block_bytes = _meta_bytes(blocks[0], dtype)
    largest_in = max((m.weight.shape[1] for m in blocks[0].modules() if isinstance(m, nn.Linear)), default=hidden)
    work_bytes = 3 * block_bytes + (12 * largest_in**2 if needs_hessian else 0)
    model_bytes = _meta_bytes(model, dtype)
    streamed = on_meta(blocks)
    if offload == "disk" and not streamed:
        raise ValueError("offload='disk' needs a model loaded with load_model(..., offload='disk')")

    if device.type != "cuda":
        placement = DiskStream.from_checkpoint(model.name_or_path, block_path, device, dtype) if streamed else Resident()
        return PlacementPlan(placement, device, False, "CPU run")

    total = torch.cuda.get_device_properties(device).total_memory
    budget = int(max_gpu_memory * GiB) if max_gpu_memory else int(0.9 * total)
    if max_gpu_memory:
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    on_device = module_device(blocks[0]).type == "cuda" and not streamed
    if streamed:
        placement = DiskStream.from_checkpoint(model.name_or_path, block_path, device, dtype)
    elif on_device or offload == "none":
        placement = Resident()
        if not on_device:
            model.to(device)
    elif offload == "cpu" or model_bytes + act_bytes + work_bytes > budget:
        placement = CPUOffload(device)
    else:
        placement = Resident()
        model.to(device)
    resident_bytes = model_bytes if isinstance(placement, Resident) else block_bytes
    fits = resident_bytes + act_bytes + work_bytes <= budget
    act_device = device if fits else torch.device("cpu")
    notes = (f"budget {budget / GiB:.1f} GiB, model {model_bytes / GiB:.2f} GiB, block {block_bytes / GiB:.3f} GiB, "
             f"activations {act_bytes / GiB:.2f} GiB")
    return PlacementPlan(placement, act_device, act_device.type == "cpu", notes)
