"""Magnitude pruning: score |W|; one threshold per matrix by default, as the papers' baseline."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class MagnitudePruner(Pruner):
    scope: str = "matrix"  # "matrix" (papers' baseline) or "row"

    name = "magnitude"

    def prune_layer(self, layer, stats, target, backend):
        score = ops.magnitude_score(layer.weight)
        scope = "row" if target.m else self.scope
        sparsity = None if target.m else target.sparsity
        return LayerResult(ops.select_mask(score, sparsity, target.n, target.m, scope=scope, backend=backend))

    def score_layer(self, layer, stats, backend):
        return ops.magnitude_score(layer.weight)
