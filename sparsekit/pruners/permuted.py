"""Channel permutation (`permute=True`, N:M) for methods that solve a per-layer problem: SparseGPT, ALPS, ADMM, DSnoT.

Score-defined methods (Wanda, magnitude) take the N:M mask of their score along the permuted columns
(`Pruner.prune_permuted`'s default). A method that updates weights or refines a mask instead runs unchanged
on the permuted problem: for an input permutation p, the layer (W[:, p]) with inputs X[p] (Hessian H[p][:, p],
per-input statistics s[p]) is the same layer with its columns relabelled, and ‖(W − Ŵ)X‖² is invariant under
the relabelling. So the method's own N:M selection on the permuted problem chooses its groups along the
permuted columns, and its mask and weights are mapped back to the original order (keep[:, p] = keep_p).
Nothing is approximated: the dense-with-zeros result is the permuted solution with its columns put back.
  * SparseGPT, ADMM, ALPS: W and H permuted; the OBS sweep / ADMM / CG see the permuted column order.
  * DSnoT: its initial mask (Wanda, magnitude or SparseGPT) on the permuted problem, and its swaps stay inside
    the N:M groups of the permuted columns (ops.dsnot with n, m on the permuted weight).
The permutation itself (ops.nm_permutation, RIA's reallocation + LSA, one per group of layers reading one
input) maximises the method's own saliency: `permutation_score` (SparseGPT's w^2 / [H^-1]_jj for the
Hessian methods, with each method's damping; DSnoT: its initial method's score).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.hf.layers import LayerView
from sparsekit.pipeline.block import LayerResult, LayerStats


def can_permute(pruner) -> bool:
    """Whether `pruner` has a permutation score: a score-defined method, a Hessian method, or DSnoT over one of them."""
    if pruner.score_defined:
        return True
    initial = getattr(pruner, "initial_pruner", None)
    if initial is not None:
        return can_permute(initial)
    return bool(pruner.needs_hessian)


def hessian_damping(pruner) -> float:
    """The fraction of mean(diag H) the method adds to H's diagonal (SparseGPT's percdamp, ALPS's damp)."""
    for name in ("percdamp", "damp"):
        value = getattr(pruner, name, None)
        if isinstance(value, (int, float)) and value >= 0:
            return float(value)
    return 0.01


def obs_saliency(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """w_ij^2 / [H^-1]_jj with H damped as SparseGPT does: the OBS error of pruning w_ij alone (ops.sparsegpt_saliency)."""
    from sparsekit import ops

    return ops.sparsegpt_saliency(weight, hessian, percdamp)


def permutation_score(pruner, layer: LayerView, stats: LayerStats, backend: str | None) -> torch.Tensor:
    """The (out, in) saliency whose kept sum the permutation maximises, in the method's own terms."""
    if pruner.score_defined:
        return pruner.score_layer(layer, stats, backend)
    initial = getattr(pruner, "initial_pruner", None)
    if initial is not None:
        return permutation_score(initial, layer, stats, backend)
    weight = layer.weight
    return obs_saliency(weight, stats.hessian.hessian.to(weight.device), hessian_damping(pruner))


@dataclass
class PermutedLayerView(LayerView):
    """The layer seen with its input columns in `perm` order (read only: results are mapped back by the caller)."""

    perm: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        weight = super().weight
        return weight[:, self.perm.to(weight.device)]

    def set_weight(self, weight):
        raise RuntimeError("a permuted layer view is read only; map the result back with unpermute()")

    apply_mask = set_weight


class _PermutedActivations:
    """ActivationStats' per-input statistics in `perm` order (read only: the methods read these and nothing else)."""

    PER_INPUT = ("sq_norm", "mean", "var")
    PLAIN = ("in_features", "nsamples", "backend")

    def __init__(self, stats, perm: torch.Tensor):
        self._stats, self._perm = stats, perm

    def __getattr__(self, name):
        if name in self.PER_INPUT:
            value = getattr(self._stats, name)
            return value[self._perm.to(value.device)]
        if name in self.PLAIN:
            return getattr(self._stats, name)
        raise AttributeError(f"a permuted layer's activation statistics offer {self.PER_INPUT + self.PLAIN}, not {name!r}; "
                             "add it to _PermutedActivations (permuted if it has one value per input feature)")


class _PermutedHessian:
    """HessianStats with H[perm][:, perm]."""

    def __init__(self, stats, perm: torch.Tensor):
        self._stats, self._perm = stats, perm

    @property
    def hessian(self) -> torch.Tensor:
        h = self._stats.hessian
        p = self._perm.to(h.device)
        return h[p][:, p]

    def __getattr__(self, name):
        return getattr(self._stats, name)


def permuted_stats(stats: LayerStats, perm: torch.Tensor) -> LayerStats:
    return LayerStats(activations=None if stats.activations is None else _PermutedActivations(stats.activations, perm),
                      hessian=None if stats.hessian is None else _PermutedHessian(stats.hessian, perm))


def unpermute(result: LayerResult, perm: torch.Tensor) -> LayerResult:
    """A result on permuted columns in the original column order (keep[:, perm] = keep_p), carrying perm."""
    p = perm.to(result.keep.device)
    keep = torch.empty_like(result.keep)
    keep[:, p] = result.keep
    weight = None
    if result.weight is not None:
        weight = torch.empty_like(result.weight)
        weight[:, p.to(weight.device)] = result.weight
    return LayerResult(keep, weight, perm=perm)


def prune_on_permuted_problem(pruner, layer: LayerView, stats: LayerStats, target, perm: torch.Tensor,
                              backend: str | None) -> LayerResult:
    """`pruner.prune_layer` on the layer with its input columns permuted by `perm`, mapped back (see the module)."""
    view = PermutedLayerView(layer.name, layer.module, perm=perm)
    return unpermute(pruner.prune_layer(view, permuted_stats(stats, perm), target, backend), perm)
