"""The pruner interface: one transformer block at a time.

`prune_block(ctx)` gets the block, its target layers and its calibration inputs and returns one
`LayerResult` per layer. The default gathers the statistics the method asks for in one forward of
the dense block and calls `prune_layer` on each layer: Wanda's sequential scheme. Methods that
work on a whole block (BESA) override `prune_block`.

Every method that prunes layer by layer also takes `update` ("none" | "alps" | "admm"): after its
mask, the kept weights are set to minimise the layer's output error on the calibration inputs
(sparsekit.ops.reconstruct, from the dense weights; "alps" starts its CG from the method's own
weights when it changes them, e.g. SparseGPT's).

With `ctx.permute` (N:M only), each group of layers reading the same input (q/k/v, gate/up) gets one
input-channel permutation maximising the sum of their kept scores (sparsekit.ops.nm_permutation, on
`permutation_score`) and an N:M mask along the permuted columns, in the original order: for methods defined
by a score (`score_layer`) the N:M selection of the score; for SparseGPT, ADMM, ALPS and DSnoT the method run
on the permuted problem and mapped back (exact, see sparsekit.pruners.permuted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.hf.layers import LayerView
from sparsekit.options import option  # noqa: F401 (pruners declare their options with it)
from sparsekit.pipeline.block import BlockContext, LayerResult, LayerStats, LayerTarget  # noqa: F401 (pruners import them here)


UPDATES = ("none", "alps", "admm")


@dataclass
class Pruner:
    """Base class; subclasses are dataclasses whose fields are the method's options."""

    update: str = option("none", "weight update on the chosen mask: none, alps (CG on the support, ALPS) or admm "
                                 "(fixed-mask ADMM, Boza); see sparsekit.ops.reconstruct")
    update_iters: int | None = option(None, "update iterations: CG steps for alps (default 10, as ALPS), ADMM steps "
                                            "for admm (default 20)", parse=int)

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
    def score_defined(self) -> bool:
        """Whether this method's mask is the N:M / top-k selection of `score_layer`."""
        return type(self).score_layer is not Pruner.score_layer

    @property
    def permutable(self) -> bool:
        """Whether channel permutation applies: masks chosen layer by layer (the base's per-layer loop) by a method
        with a permutation score (see sparsekit.pruners.permuted)."""
        from sparsekit.pruners.permuted import can_permute

        return self.takes_update and can_permute(self)

    def permutation_score(self, layer: LayerView, stats: LayerStats, backend: str | None) -> torch.Tensor:
        """The (out, in) saliency the input permutation maximises the kept sum of (score_layer for score methods)."""
        from sparsekit.pruners.permuted import permutation_score

        return permutation_score(self, layer, stats, backend)

    def prune_permuted(self, layer: LayerView, stats: LayerStats, target: LayerTarget, perm: torch.Tensor,
                       backend: str | None) -> LayerResult:
        """This method's result with its N:M groups along the input permutation `perm`, in the original order."""
        from sparsekit import ops
        from sparsekit.pruners.permuted import prune_on_permuted_problem

        if not self.score_defined:
            return prune_on_permuted_problem(self, layer, stats, target, perm, backend)
        score = self.score_layer(layer, stats, backend)
        return LayerResult(ops.permuted_nm_mask(score, perm, target.n, target.m, backend=backend), perm=perm)

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
            score = torch.cat([self.permutation_score(v, stats[v.name], ctx.backend) for v in views])
            perm = ops.nm_permutation(score, n, m, backend=ctx.backend)
            perms.update({v.name: perm for v in views})
        return perms

    def check_update(self) -> None:
        """Raise when `update` is not one of UPDATES or this method cannot take one."""
        if self.update not in UPDATES:
            raise ValueError(f"{type(self).__name__}: unknown update {self.update!r}; choose one of {UPDATES}")
        if self.update_iters is not None and (not isinstance(self.update_iters, int) or self.update_iters < 0):
            raise ValueError(f"{type(self).__name__}: update_iters must be an int >= 0, got {self.update_iters!r}")
        if self.update != "none" and not self.takes_update:
            raise ValueError(f"{type(self).__name__} prunes whole blocks and takes no weight update; use update='none'")

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
                    result = self.prune_permuted(view, stats[view.name], ctx.targets[view.name], perms[view.name],
                                                 ctx.backend)
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
