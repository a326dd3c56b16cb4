"""One transformer block's turn in a pruning pass: what each layer must reach and what a method returns,
and `BlockContext`, the block with its calibration inputs (`forward`, `collect_stats`).

Shared by the pruners (sparsekit.pruners) and the allocation pass (sparsekit.allocation.owl), which both sit
above the pipeline (architecture.md §1), so neither imports the other for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparsekit._validate import check_finite
from sparsekit.hf.layers import LayerView
from sparsekit.pipeline import distributed
from sparsekit.pipeline.capture import BlockInputs
from sparsekit.pipeline.report import PhaseTimer
from sparsekit.ops.stats import ActivationStats, HessianStats


@dataclass
class LayerStats:
    activations: ActivationStats | None = None
    hessian: HessianStats | None = None


@dataclass
class LayerTarget:
    """What one layer must reach: `sparsity` (unstructured) or n:m."""

    sparsity: float
    n: int = 0
    m: int = 0


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
    extra: dict = field(default_factory=dict)
    permute: bool = False  # N:M channel permutation, see the module docstring
    input_groups: dict[str, int] = field(default_factory=dict)  # layer -> id shared by layers reading one input

    @torch.no_grad()
    def forward(self, hooks: dict[nn.Module, callable] | None = None, store=None) -> None:
        """Run every calibration batch through the block, with optional forward hooks on its modules.

        With `store`, each batch's output is written to store[start:start + batch].
        """
        handles = [module.register_forward_hook(hook) for module, hook in (hooks or {}).items()]
        try:
            for start, x in self.inputs.batches():
                out = self.inputs.call_block(self.block, self.index, x, self.device)
                if store is not None:
                    store[start:start + out.shape[0]] = out.to(store.device)
        finally:
            for handle in handles:
                handle.remove()

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


def _reduce_across_ranks(stats: dict[str, LayerStats]) -> None:
    """Sum every accumulator's raw sums over the processes (no-op in a single process)."""
    if distributed.world()[1] == 1:
        return
    accumulators = [acc for name in sorted(stats) for acc in (stats[name].activations, stats[name].hessian) if acc is not None]
    states = [acc.state() for acc in accumulators]
    distributed.all_reduce_states(states)
    for acc, state in zip(accumulators, states):
        acc.load_state(state)
