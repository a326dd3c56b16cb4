"""The pruner interface: one transformer block at a time.

`prune_block(ctx)` gets the block, its target layers and its calibration inputs and returns one
`LayerResult` per layer. The default gathers the statistics the method asks for in one forward of
the dense block and calls `prune_layer` on each layer: Wanda's sequential scheme. Methods that
work on a whole block (BESA) override `prune_block`.

Every method that prunes layer by layer also takes `update` ("none" | "alps" | "admm"): after its
mask, the kept weights are set to minimise the layer's output error on the calibration inputs
(sparsekit.ops.reconstruct, from the dense weights; "alps" starts its CG from the method's own
weights when it changes them, e.g. SparseGPT's).

With `ctx.permute` (N:M only, methods defined by a score: `score_layer`), each group of layers reading the
same input (q/k/v, gate/up) gets one input-channel permutation maximising the sum of their kept scores
(sparsekit.ops.nm_permutation) and an N:M mask along the permuted columns, in the original order.
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
from sparsekit.stats import ActivationStats, HessianStats


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


UPDATES = ("none", "alps", "admm")


@dataclass
class Pruner:
    """Base class; subclasses are dataclasses whose fields are the method's options."""

    update: str = field(default="none", metadata={
        "help": "weight update on the chosen mask: none, alps (CG on the support, ALPS) or admm (fixed-mask ADMM, "
                "Boza); see sparsekit.ops.reconstruct"})
    update_iters: int | None = field(default=None, metadata={
        "parse": int, "help": "update iterations: CG steps for alps (default 10, as ALPS), ADMM steps for admm (default 20)"})

    name = "base"
    needs_activations = False
    needs_hessian = False
    supports_distributed = True  # False for methods that train (their gradients are not reduced)
    takes_update = True  # False for methods whose prune_block does not run the base's per-layer loop

    def prune_layer(self, layer: LayerView, stats: LayerStats, target: LayerTarget, backend: str | None) -> LayerResult:
        raise NotImplementedError

    def score_layer(self, layer: LayerView, stats: LayerStats, backend: str | None) -> torch.Tensor:
        """The importance score (out, in) this method's N:M mask keeps the largest of (methods defined by a score)."""
        raise NotImplementedError

    @property
    def permutable(self) -> bool:
        """Whether channel permutation applies: the mask is an N:M selection of `score_layer`, chosen layer by layer."""
        return type(self).score_layer is not Pruner.score_layer and type(self).prune_block is Pruner.prune_block

    def permutations(self, ctx: BlockContext, stats: dict[str, LayerStats]) -> dict[str, torch.Tensor]:
        """layer -> input permutation: one per group of N:M layers reading the same input, from their stacked scores."""
        from sparsekit import ops

        groups: dict[tuple, list[LayerView]] = {}
        for view in ctx.layers:
            target = ctx.targets[view.name]
            if target.m:
                groups.setdefault((ctx.input_groups.get(view.name, view.name), target.n, target.m), []).append(view)
        perms = {}
        for (_, n, m), views in groups.items():
            # rows stacked: the kept score of the stack is the sum of the layers' kept scores
            score = torch.cat([self.score_layer(v, stats[v.name], ctx.backend) for v in views])
            perm = ops.nm_permutation(score, n, m, backend=ctx.backend)
            perms.update({v.name: perm for v in views})
        return perms

    def check_update(self) -> None:
        """Raise when `update` is not one of UPDATES or this method cannot take one."""
        if self.update not in UPDATES:
            raise ValueError(f"{self.name}: unknown update {self.update!r}; choose one of {UPDATES}")
        if self.update_iters is not None and (not isinstance(self.update_iters, int) or self.update_iters < 0):
            raise ValueError(f"{self.name}: update_iters must be an int >= 0, got {self.update_iters!r}")
        if self.update != "none" and not self.takes_update:
            raise ValueError(f"method {self.name!r} prunes whole blocks and takes no weight update; use update='none'")

    def updated(self, layer: LayerView, stats: LayerStats, result: LayerResult) -> LayerResult:
        """`result` with its kept weights re-fitted by ops.reconstruct against the dense weights."""
        from sparsekit import ops

        weight = layer.weight
        hessian = stats.hessian.hessian.to(weight.device)
        options = {}
        if self.update_iters is not None:
            options["cg_iters" if self.update == "alps" else "iters"] = self.update_iters
        if self.update == "alps" and result.weight is not None:
            options["init"] = result.weight
        new_weight = ops.reconstruct(weight, result.keep, hessian, method=self.update, **options)
        return LayerResult(result.keep, new_weight)

    def prune_block(self, ctx: BlockContext) -> dict[str, LayerResult]:
        self.check_update()
        update = self.update != "none"
        # the permutation needs the activation pass also to find which layers read the same input
        stats = ctx.collect_stats(self.needs_activations or ctx.permute, self.needs_hessian or update)
        perms = {}
        if ctx.permute:
            with ctx.timer("permutation"):
                perms = self.permutations(ctx, stats)
        results = {}
        for view in ctx.layers:
            before = ctx.timer.seconds["masks"] + ctx.timer.seconds.get("update", 0.0)
            with ctx.timer("masks"):
                if view.name in perms:
                    from sparsekit import ops

                    target = ctx.targets[view.name]
                    score = self.score_layer(view, stats[view.name], ctx.backend)
                    result = LayerResult(ops.permuted_nm_mask(score, perms[view.name], target.n, target.m,
                                                              backend=ctx.backend), perm=perms[view.name])
                else:
                    result = self.prune_layer(view, stats[view.name], ctx.targets[view.name], ctx.backend)
            if update:
                with ctx.timer("update"):
                    result = self.updated(view, stats[view.name], result)
                result.perm = perms.get(view.name)
            result.seconds = ctx.timer.seconds["masks"] + ctx.timer.seconds.get("update", 0.0) - before
            results[view.name] = result
            stats[view.name] = None  # free Hessians as soon as they are used
        return results
