"""The sequential pipeline (as in Wanda/SparseGPT): one block at a time, pruned outputs feed the next.

1. capture block 0's calibration inputs and the arguments the model passes to every block;
2. for each block: move it to the device, let the method prune its target layers (by default one
   dense forward gathers statistics, then masks are computed per layer), apply the masks, re-run
   the pruned block to produce the next block's inputs, move it back.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from sparsekit.pipeline.capture import capture_inputs
from sparsekit.pipeline.config import PruneConfig
from sparsekit.pipeline.report import LayerReport, PhaseTimer, PruneReport
from sparsekit.pruners import BlockContext, LayerTarget, make_pruner

log = logging.getLogger(__name__)


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def _on_device(modules: list[nn.Module], device: torch.device):
    """Move modules to `device` for the duration, then back where each was."""
    homes = [_device_of(m) for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)


def _non_block_modules(model: nn.Module, blocks: nn.ModuleList) -> list[nn.Module]:
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
        if module is not model and (list(module.parameters(recurse=False)) or list(module.buffers(recurse=False))):
            raise RuntimeError("parameters directly on a block's ancestor are not supported")

    visit(model)
    return out


def _check_calibration(input_ids) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"calibration must be a LongTensor of token ids shaped (nsamples, seqlen), got {got}")
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 2:
        raise ValueError(f"calibration needs at least 1 sequence of 2+ tokens, got shape {tuple(input_ids.shape)}")
    return input_ids


@torch.no_grad()
def prune(model: nn.Module, calibration: torch.Tensor, config: PruneConfig | None = None, **overrides) -> PruneReport:
    """Prune `model` in place with `config` on calibration token ids (nsamples, seqlen); return the report."""
    config = config or PruneConfig(**overrides)
    calibration = _check_calibration(calibration)
    pruner = make_pruner(config.method, **config.method_options)
    block_path, blocks = find_blocks(model, config.blocks)
    device = torch.device(config.device) if config.device else _device_of(model)
    report = PruneReport(method=config.method, pattern=config.pattern)
    timer = PhaseTimer(report.seconds)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with _on_device(_non_block_modules(model, blocks) + [blocks[0]], device), timer("capture"):
        inputs = capture_inputs(model, blocks, calibration, config.batch_size, device)

    for index, block in enumerate(tqdm(blocks, desc=f"{config.method} {config.pattern}", unit="block")):
        layers = select_layers(block, f"{block_path}.{index}", config.targets, config.ignore)
        targets = {v.name: LayerTarget(config.layer_sparsity(v.name), config.n, config.m) for v in layers}
        with _on_device([block], device):
            ctx = BlockContext(block, index, layers, targets, inputs, device, timer, config.backend)
            results = pruner.prune_block(ctx)
            for view in layers:
                result = results[view.name]
                if result.weight is not None:
                    view.set_weight(result.weight)
                view.apply_mask(result.keep)
                reached = 1.0 - result.keep.float().mean().item()
                report.layers.append(LayerReport(view.name, tuple(view.weight.shape), targets[view.name].sparsity, reached, result.seconds))
            if index < len(blocks) - 1:
                with timer("forward"):
                    ctx.forward(store=inputs.hidden)
    if device.type == "cuda":
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    log.info("pruned %d layers to %.4f sparsity", len(report.layers), report.sparsity)
    return report
