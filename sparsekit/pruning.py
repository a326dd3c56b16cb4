"""`PruneConfig` (everything a pruning run needs besides the model and the calibration tokens) and `prune`,
the sequential pass (as in Wanda/SparseGPT): one block at a time, pruned outputs feed the next.

1. plan where blocks and calibration activations live (pipeline/placement.py), shard calibration batches
   across processes when launched by torchrun (pipeline/distributed.py);
2. capture block 0's calibration inputs and the arguments the model passes to every block;
3. optionally let an allocation (sparsekit.allocation, e.g. OWL) set every layer's sparsity from a dense pass;
4. for each block: bring it to the device, let the method prune its target layers (by default one
   dense forward gathers statistics, then masks are computed per layer), apply the masks, re-run
   the pruned block to produce the next block's inputs, checkpoint (pipeline/checkpoint.py), put it back.

Not named `prune.py`: `sparsekit.prune` is this module's function, and a submodule of that name would
replace the attribute the first time anything imported it (architecture.md §1).
"""
from __future__ import annotations

import logging
import re
from functools import partial
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsekit import backend as _backend
from sparsekit.checks import check_sparsity, parse_pattern
from sparsekit.allocation import allocate_sparsity, check_allocation
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS, select_layers
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR
from sparsekit.pipeline import distributed
from sparsekit.pipeline.block import BlockContext, LayerTarget, capture_block_inputs, walk_blocks
from sparsekit.pipeline.checkpoint import RunCheckpoint, fingerprint, run_lock
from sparsekit.pipeline.placement import (DiskStream, model_device, module_device, non_block_modules, on_device,
                                          plan_placement)
from sparsekit.pipeline.report import LayerReport, PhaseTimer, PruneReport, row_sparsity_spread
from sparsekit.preflight import check_layer_selection, check_regexes
from sparsekit.pruners import make_pruner

log = logging.getLogger(__name__)


@dataclass
class PruneConfig:
    """
    method:      "magnitude" | "wanda" | "sparsegpt" | … (see sparsekit.pruners.PRUNERS)
    sparsity:    fraction pruned, or {layer name or "re:<regex>": fraction}; None: 0.5 unstructured, n/m with N:M
                 (an N:M pattern has no other default)
    pattern:     "unstructured" or "N:M" ("2:4", "4:8", …)
    targets / ignore: class names or "re:<regex>" over module names (llm-compressor style)
    method_options: the method's own options (e.g. {"blocksize": 128} for sparsegpt)
    batch_size:  calibration sequences per block forward
    device:      where blocks run (None: where the model is); blocks move there one at a time
    blocks:      dotted path of the block ModuleList when it cannot be found automatically
    offload:     "auto" | "none" | "cpu" | "disk": where blocks wait between their turns (see placement.py)
    max_gpu_memory: GPU memory budget in GiB (enforced as the process's CUDA memory fraction)
    checkpoint_dir: save each finished block here and resume from it (required for disk offload)
    allocation:  None (every layer at `sparsity`) or "owl": spread the overall sparsity over blocks
                 from a dense pass first (sparsekit.allocation; unstructured only)
    allocation_options: the allocation's options (owl: {"m": 5.0, "lam": 0.08})
    permute:     N:M only: choose each mask along an input-channel permutation (RIA's reallocation + LSA,
                 one per group of layers reading the same input); weights stay in their order, the 2:4
                 layers made by `sparsify` carry the permutation (sparsekit.ops.nm_permutation)
    """

    method: str = "wanda"
    sparsity: float | Mapping[str, float] | None = None
    pattern: str = "unstructured"
    targets: Sequence[str] = DEFAULT_TARGETS
    ignore: Sequence[str] = DEFAULT_IGNORE
    method_options: dict = field(default_factory=dict)
    batch_size: int = 8
    device: str | None = None
    blocks: str | None = None
    backend: str | None = None
    offload: str = "auto"
    max_gpu_memory: float | None = None
    checkpoint_dir: str | None = None
    allocation: str | None = None
    allocation_options: dict = field(default_factory=dict)
    permute: bool = False

    def __post_init__(self):
        self.n, self.m = parse_pattern(self.pattern)
        if self.sparsity is None and not self.m:
            self.sparsity = 0.5
        if self.offload not in ("auto", "none", "cpu", "disk"):
            raise ValueError(f"offload must be auto, none, cpu or disk, got {self.offload!r}")
        if self.offload == "disk" and not self.checkpoint_dir:
            raise ValueError("offload='disk' writes each pruned block to the run checkpoint: pass checkpoint_dir "
                             "(--checkpoint-dir DIR)")
        if self.max_gpu_memory is not None and not self.max_gpu_memory > 0:
            raise ValueError(f"max_gpu_memory must be a positive number of GiB, got {self.max_gpu_memory}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_regexes(self.targets, "targets")
        check_regexes(self.ignore, "ignore")
        if isinstance(self.sparsity, Mapping):
            check_regexes(self.sparsity.keys(), "sparsity")
            for key, value in self.sparsity.items():
                check_sparsity(value)
        elif self.sparsity is not None:
            self.sparsity = check_sparsity(self.sparsity)
        if self.m and self.sparsity is not None:
            values = self.sparsity.values() if isinstance(self.sparsity, Mapping) else [self.sparsity]
            for value in values:
                if abs(value - self.n / self.m) > 1e-9:
                    raise ValueError(
                        f"sparsity {value} contradicts the {self.pattern} pattern, which prunes exactly "
                        f"{self.n / self.m:.4g}; drop --sparsity or set it to {self.n / self.m:.4g}"
                    )
        check_allocation(self)
        if self.permute and not self.m:
            raise ValueError("permute chooses N:M groups along permuted input channels; it needs an N:M pattern such as '2:4'")
        if self.permute and self.checkpoint_dir:
            raise ValueError("permute keeps each layer's permutation in memory only (a resumed run would lose it); "
                             "drop checkpoint_dir (--checkpoint-dir) or permute")

    def check_save_format(self, save_format: str) -> None:
        """Whether this run's result can be written as `save_format` (dense, sparsekit, sparse-24-bitmask)."""
        if save_format != "dense" and (self.n, self.m) != (2, 4):
            raise ValueError(f"--save-format {save_format} stores 2:4 weights compressed; it needs --pattern 2:4 (got {self.pattern})")
        if self.offload == "disk" and save_format != "dense":
            raise ValueError("--offload disk saves dense checkpoints; compress afterwards with `sparsekit sparsify`")

    @property
    def target_sparsity(self) -> float | Mapping[str, float]:
        """The overall fraction asked for (n/m for N:M without an explicit sparsity), or the per-layer mapping."""
        return self.sparsity if self.sparsity is not None else self.n / self.m

    def layer_sparsity(self, name: str) -> float:
        if self.sparsity is None:
            return self.n / self.m
        if not isinstance(self.sparsity, Mapping):
            return self.sparsity
        if name in self.sparsity:
            return self.sparsity[name]
        for key, value in self.sparsity.items():
            if key.startswith("re:") and re.fullmatch(key[3:], name):
                return value
        raise ValueError(f"no sparsity given for layer {name!r}; add its name or a 're:<regex>' entry (e.g. 're:.*') to the mapping")


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
        raise ValueError(f"method {config.method!r} does not choose its masks layer by layer, so permute does not apply to "
                         "it; use permute with wanda, magnitude, sparsegpt, admm, alps or dsnot")
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

    with on_device(non_block_modules(model, blocks), device), timer("capture"):
        inputs = capture_block_inputs(model, blocks, placement, local_ids, config.batch_size, device,
                                      store_device=plan.activations_device, pin=plan.pin_activations)
    if config.allocation:  # e.g. OWL: a pass over the still-dense blocks sets every layer's sparsity
        with timer("allocation"):
            config = allocate_sparsity(config, blocks, block_path, inputs, device, placement)
    if finished >= 0:
        inputs.hidden = checkpoint.load_inputs(plan.activations_device)
        _restore_finished_blocks(blocks, checkpoint, finished, streamed)
        log.info("resuming after block %d from %s", finished, config.checkpoint_dir)

    backend_calls = _backend.usage()

    def prune_block(index: int, block: nn.Module) -> None:
        nonlocal backend_calls
        layers = select_layers(block, f"{block_path}.{index}", config.targets, config.ignore)
        targets = {v.name: LayerTarget(config.layer_sparsity(v.name), config.n, config.m) for v in layers}
        ctx = BlockContext(block, index, layers, targets, inputs, device, timer, config.backend, permute=config.permute)
        results = pruner.prune_block(ctx)
        for view in layers:
            result = results[view.name]
            if result.weight is not None:
                view.set_weight(result.weight)
            view.apply_mask(result.keep)
            if result.perm is not None:  # read by sparsekit.sparsify; not in the state dict (dense export unchanged)
                setattr(view.module, INPUT_PERMUTATION_ATTR, result.perm.cpu())
            elif hasattr(view.module, INPUT_PERMUTATION_ATTR):  # from an earlier pruning run: no longer this mask's order
                delattr(view.module, INPUT_PERMUTATION_ATTR)
            reached = 1.0 - result.keep.sum().item() / result.keep.numel()  # exact count (a float32 mean is not)
            report.layers.append(LayerReport(view.name, tuple(view.weight.shape), targets[view.name].sparsity, reached,
                                             result.seconds, row_sparsity_spread(result.keep)))
        report.add_backends(_backend.usage_since(backend_calls), _backend.fallbacks())  # what really ran
        backend_calls = _backend.usage()

    def save_block(index: int, block: nn.Module) -> None:
        if checkpoint:
            with timer("checkpoint"):
                checkpoint.save(index, block, None if index == len(blocks) - 1 else inputs.hidden, report)

    progress = partial(tqdm, initial=finished + 1, total=len(blocks), desc=f"{config.method} {config.pattern}",
                       unit="block", disable=not distributed.is_main())
    walk_blocks(blocks, placement, inputs, device, prune_block, start=finished + 1, done=save_block, timer=timer,
                progress=progress)
    if device.type == "cuda":
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    log.info("pruned %d layers to %.4f sparsity", len(report.layers), report.sparsity)
    return report
