"""One transformer block's turn in a pass over the model: `walk_blocks`, the one onload / run / offload loop
(used by pruning, OWL's dense pass and streamed evaluation); what each layer must reach and what a method
returns; and `BlockContext`, the block with its calibration inputs (`forward`, `collect_stats`).

Shared by the pruners (sparsekit.pruners) and the allocation pass (sparsekit.allocation.owl), which both sit
above the pipeline (architecture.md §1), so neither imports the other for it.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from sparsekit.checks import check_finite
from sparsekit.hf.layers import LayerView
from sparsekit.pipeline import distributed
from sparsekit.pipeline.capture import BlockInputs, capture_inputs
from sparsekit.pipeline.placement import Placement
from sparsekit.pipeline.report import PhaseTimer
from sparsekit.ops.stats import ActivationStats, HessianStats


@dataclass
class LayerStats:
    activations: ActivationStats | None = None
    hessian: HessianStats | None = None


@dataclass
class LayerTarget:
    """What one layer must reach: `sparsity` (unstructured: a fraction, or a per-row tensor of fractions (out,))
    or n:m (then `sparsity` is None or n/m)."""

    sparsity: float | torch.Tensor | None
    n: int = 0
    m: int = 0

    def pattern(self) -> tuple[float | torch.Tensor | None, int, int]:
        """(sparsity, n, m) as the ops take them: (None, n, m) for N:M, else (sparsity, 0, 0)."""
        return (None, self.n, self.m) if self.m else (self.sparsity, 0, 0)


@dataclass
class LayerResult:
    keep: torch.Tensor
    weight: torch.Tensor | None = None  # replacement weight (out, in) when the method updates weights
    seconds: float = 0.0
    perm: torch.Tensor | None = None  # input permutation under which `keep` is N:M (channel permutation)


@dataclass
class BlockContext:
    block: nn.Module
    index: int
    layers: list[LayerView]
    targets: dict[str, LayerTarget]
    inputs: BlockInputs
    device: torch.device
    timer: PhaseTimer
    backend: str | None = None
    permute: bool = False  # N:M channel permutation, see the module docstring
    input_groups: dict[str, int] = field(default_factory=dict)  # layer -> id shared by layers reading one input

    @torch.no_grad()
    def forward(self, hooks: dict[nn.Module, callable] | None = None, store=None) -> None:
        """Run every calibration batch through the block, with optional forward hooks on its modules.

        With `store`, each batch's output is written to store[start:start + batch].
        """
        forward_block(self.block, self.index, self.inputs, self.device, hooks, store)

    def collect_stats(self, activations: bool, hessian: bool) -> dict[str, LayerStats]:
        """One dense forward of the block, accumulating the requested statistics of each layer's input."""
        stats = {v.name: LayerStats(
            ActivationStats(v.in_features, device=self.device, backend=self.backend) if activations else None,
            HessianStats(v.in_features, device=self.device) if hessian else None,
        ) for v in self.layers}

        # q/k/v (and gate/up) receive the same input tensor: measure it once, add it to each layer
        latest = {"x": None, "measured": {}}

        def hook_for(view: LayerView):
            def hook(module, args, output):
                x = args[0]
                if latest["x"] is not x:
                    check_finite(x, f"layer {view.name}")
                    latest.update(x=x, measured={}, group=latest.get("group", -1) + 1)
                self.input_groups[view.name] = latest["group"]
                x = x.detach()
                entry = stats[view.name]
                for kind, acc in (("activations", entry.activations), ("hessian", entry.hessian)):
                    if acc is not None:
                        if kind not in latest["measured"]:
                            latest["measured"][kind] = acc.measure(x)
                        acc.add(latest["measured"][kind])
            return hook

        if activations or hessian:
            with self.timer("statistics"):
                self.forward({v.module: hook_for(v) for v in self.layers})
                _reduce_across_ranks(stats)
            latest.update(x=None, measured={})
        return stats


@torch.no_grad()
def forward_block(block: nn.Module, index: int, inputs: BlockInputs, device: torch.device,
                  hooks: dict[nn.Module, Callable] | None = None, store: torch.Tensor | None = None) -> None:
    """Every batch of `inputs` through block `index` (with optional forward hooks on its modules); with `store`,
    each batch's output is written to store[start:start + batch]."""
    handles = [module.register_forward_hook(hook) for module, hook in (hooks or {}).items()]
    try:
        for start, x in inputs.batches():
            out = inputs.call_block(block, index, x, device)
            if store is not None:
                store[start:start + out.shape[0]] = out.to(store.device)
    finally:
        for handle in handles:
            handle.remove()


def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, placement: Placement, input_ids: torch.Tensor,
                         batch_size: int, device: torch.device, store_device=None, pin: bool = False) -> BlockInputs:
    """`capture_inputs` (block 0's hidden states and the arguments the model passes every block) with block 0
    brought to `device` by `placement` for the capture and put back after; the modules outside the blocks must
    already sit on `device` (placement.on_device)."""
    placement.onload(0, blocks[0])
    try:
        return capture_inputs(model, blocks, input_ids, batch_size, device, store_device=store_device, pin=pin)
    finally:
        placement.offload(0, blocks[0])


def walk_blocks(blocks: nn.ModuleList, placement: Placement, inputs: BlockInputs, device: torch.device,
                visit: Callable[[int, nn.Module], None] | None = None, *, start: int = 0, forward_last: bool = False,
                done: Callable[[int, nn.Module], None] | None = None, timer: PhaseTimer | None = None,
                progress: Callable[[Iterable[int]], Iterable[int]] | None = None) -> None:
    """The one onload / run / offload loop over decoder blocks. For each block from `start`, brought to `device`
    by `placement` for its turn:

    1. `visit(index, block)`: what the pass does with the block (prune its layers, measure them, nothing);
    2. every batch of `inputs` through the block, the outputs written over `inputs.hidden`, which become the
       next block's inputs (for the last block only with `forward_last`; timed as "forward" on `timer`);
    3. `done(index, block)`: e.g. checkpoint the finished block together with the new inputs;

    then the block goes back where it waits (`placement.offload`), also when a step fails.
    `progress` wraps the block indices (e.g. a tqdm bar).
    """
    indices = range(start, len(blocks))
    for index in progress(indices) if progress else indices:
        block = blocks[index]
        placement.onload(index, block)
        try:
            if visit is not None:
                visit(index, block)
            if forward_last or index < len(blocks) - 1:
                with timer("forward") if timer else nullcontext():
                    forward_block(block, index, inputs, device, store=inputs.hidden)
            if done is not None:
                done(index, block)
        finally:
            placement.offload(index, block)


def _reduce_across_ranks(stats: dict[str, LayerStats]) -> None:
    """Sum every accumulator's raw sums over the processes (no-op in a single process)."""
    if distributed.world()[1] == 1:
        return
    accumulators = [acc for name in sorted(stats) for acc in (stats[name].activations, stats[name].hessian) if acc is not None]
    states = [acc.state() for acc in accumulators]
    distributed.all_reduce_states(states)
    for acc, state in zip(accumulators, states):
        acc.load_state(state)
