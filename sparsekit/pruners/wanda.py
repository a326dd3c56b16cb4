"""Wanda (Sun et al., arXiv 2306.11695): score |W_ij| * ||X_j||, prune the lowest per output row."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class WandaPruner(Pruner):
    needs_activations = True

    def prune_layer(self, layer, stats, target, backend):
        sq_norm = stats.activations.sq_norm.to(layer.weight.device)
        return LayerResult(ops.wanda_mask(layer.weight, sq_norm, *target.pattern(), backend=backend))

    def score_layer(self, layer, stats, backend):
        return ops.wanda_score(layer.weight, stats.activations.sq_norm.to(layer.weight.device), backend=backend)
