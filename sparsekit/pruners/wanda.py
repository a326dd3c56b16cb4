"""Wanda (Sun et al., arXiv 2306.11695): score |W_ij| * ||X_j||, prune the lowest per output row."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class WandaPruner(Pruner):
    name = "wanda"
    needs_activations = True

    def prune_layer(self, layer, stats, target, backend):
        sparsity = None if target.m else target.sparsity
        keep = ops.wanda_mask(layer.weight, stats.activations.sq_norm.to(layer.weight.device), sparsity,
                              target.n, target.m, backend=backend)
        return LayerResult(keep)

    def score_layer(self, layer, stats, backend):
        return ops.wanda_score(layer.weight, stats.activations.sq_norm.to(layer.weight.device), backend=backend)
