"""The sequential pipeline (as in Wanda/SparseGPT): one block at a time, pruned outputs feed the next.

1. plan where blocks and calibration activations live (placement.py), shard calibration batches
   across processes when launched by torchrun (distributed.py);
2. capture block 0's calibration inputs and the arguments the model passes to every block;
3. for each block: bring it to the device, let the method prune its target layers (by default one
   dense forward gathers statistics, then masks are computed per layer), apply the masks, re-run
   the pruned block to produce the next block's inputs, checkpoint (checkpoint.py), put it back.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsekit import backend as _backend
from sparsekit.allocation import allocate_sparsity
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR
from sparsekit.pipeline import distributed
from sparsekit.pipeline.capture import capture_inputs
from sparsekit.pipeline.checkpoint import RunCheckpoint, fingerprint, run_lock
from sparsekit.pipeline.config import PruneConfig
from sparsekit.preflight import check_layer_selection
from sparsekit.pipeline.placement import DiskStream, module_device, non_block_modules, on_device, plan_placement
from sparsekit.pipeline.report import LayerReport, PhaseTimer, PruneReport, row_sparsity_spread
from sparsekit.pruners import BlockContext, LayerTarget, make_pruner

log = logging.getLogger(__name__)


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


def _check_calibration(input_ids) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"calibration must be a LongTensor of token ids shaped (nsamples, seqlen), got {got}")
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 2:
        raise ValueError(f"calibration needs at least 1 sequence of 2+ tokens, got shape {tuple(input_ids.shape)}")
    return input_ids


def _restore_finished_blocks(blocks: nn.ModuleList, checkpoint: RunCheckpoint, finished: int, streamed: bool) -> None:
    if streamed:  # streamed blocks stay on meta; the final save reads the checkpoint's files
        return
    for index in range(finished + 1):
        block = blocks[index]
        block.load_state_dict(checkpoint.block_tensors(index, module_device(block)))


def prune(model: nn.Module, calibration: torch.Tensor, config: PruneConfig | None = None, **overrides) -> PruneReport:
    """Prune `model` in place with `config` on calibration token ids (nsamples, seqlen); return the report.

    Under torchrun every process passes the same calibration; each takes its share of the batches.
    A checkpoint_dir is locked for the run: a second run on it fails at once.
    """
    config = config or PruneConfig(**overrides)
    with run_lock(config.checkpoint_dir):
        return _prune(model, calibration, config)


@torch.no_grad()
def _prune(model: nn.Module, calibration: torch.Tensor, config: PruneConfig) -> PruneReport:
    calibration = _check_calibration(calibration)
    pruner = make_pruner(config.method, **config.method_options)
    if distributed.world()[1] > 1 and not pruner.supports_distributed:
        raise ValueError(f"method {config.method!r} does not support several processes; run it in one process")
    if config.permute and not pruner.permutable:
        raise ValueError(f"method {config.method!r} does not choose its mask from a per-layer score, so permute does not "
                         "apply to it; use permute with wanda or magnitude")
    block_path, blocks = find_blocks(model, config.blocks)
    check_layer_selection(model, config.targets, config.ignore, n=config.n, m=config.m, blocks_path=config.blocks)
    device = torch.device(config.device) if config.device else model_device(model)
    local_ids = distributed.shard_batches(calibration, config.batch_size)
    plan = plan_placement(model, blocks, block_path, local_ids.shape[0], local_ids.shape[1], device,
                          config.offload, config.max_gpu_memory, pruner.needs_hessian)
    placement = plan.placement
    streamed = isinstance(placement, DiskStream)
    log.info("placement: %s", plan.describe())
    if streamed and not config.checkpoint_dir:
        raise ValueError("a disk-offloaded model keeps its pruned blocks in the run checkpoint: pass checkpoint_dir (--checkpoint-dir)")
    checkpoint = RunCheckpoint(config.checkpoint_dir, fingerprint(config, calibration, model)) if config.checkpoint_dir else None
    finished, report = checkpoint.finished() if checkpoint else (-1, None)
    report = report or PruneReport(method=config.method, pattern=config.pattern)
    report.placement = plan.describe()
    timer = PhaseTimer(report.seconds)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with on_device(non_block_modules(model, blocks), device):
        placement.onload(0, blocks[0])
        try:
            with timer("capture"):
                inputs = capture_inputs(model, blocks, local_ids, config.batch_size, device,
                                        store_device=plan.activations_device, pin=plan.pin_activations)
        finally:
            placement.offload(0, blocks[0])
    if config.allocation:  # e.g. OWL: a pass over the still-dense blocks sets every layer's sparsity
        with timer("allocation"):
            config = allocate_sparsity(config, blocks, block_path, inputs, device, placement)
    if finished >= 0:
        inputs.hidden = checkpoint.load_inputs(plan.activations_device)
        _restore_finished_blocks(blocks, checkpoint, finished, streamed)
        log.info("resuming after block %d from %s", finished, config.checkpoint_dir)

    backend_calls = _backend.usage()
    progress = tqdm(range(finished + 1, len(blocks)), initial=finished + 1, total=len(blocks),
                    desc=f"{config.method} {config.pattern}", unit="block", disable=not distributed.is_main())
    for index in progress:
        block = blocks[index]
        layers = select_layers(block, f"{block_path}.{index}", config.targets, config.ignore)
        targets = {v.name: LayerTarget(config.layer_sparsity(v.name), config.n, config.m) for v in layers}
        placement.onload(index, block)
        try:
            ctx = BlockContext(block, index, layers, targets, inputs, device, timer, config.backend, permute=config.permute)
            results = pruner.prune_block(ctx)
            for view in layers:
                result = results[view.name]
                if result.weight is not None:
                    view.set_weight(result.weight)
                view.apply_mask(result.keep)
                if result.perm is not None:  # read by sparsekit.sparsify; not in the state dict (dense export unchanged)
                    setattr(view.module, INPUT_PERMUTATION_ATTR, result.perm.cpu())
                reached = 1.0 - result.keep.sum().item() / result.keep.numel()  # exact count (a float32 mean is not)
                report.layers.append(LayerReport(view.name, tuple(view.weight.shape), targets[view.name].sparsity, reached, result.seconds,
                                                 row_sparsity_spread(result.keep)))
            report.add_backends(_backend.usage_since(backend_calls), _backend.fallbacks())  # what really ran
            backend_calls = _backend.usage()
            last = index == len(blocks) - 1
            if not last:
                with timer("forward"):
                    ctx.forward(store=inputs.hidden)
            if checkpoint:
                with timer("checkpoint"):
                    checkpoint.save(index, block, None if last else inputs.hidden, report)
        finally:
            placement.offload(index, block)
    if device.type == "cuda":
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    log.info("pruned %d layers to %.4f sparsity", len(report.layers), report.sparsity)
    return report
