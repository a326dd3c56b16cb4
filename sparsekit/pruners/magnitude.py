"""Magnitude pruning: score |W|; one threshold per matrix by default, as the papers' baseline."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner, option


@dataclass
class MagnitudePruner(Pruner):
    scope: str = option("matrix", "unstructured: 'matrix' (one threshold per matrix, the papers' baseline) or 'row' "
                                  "(per output row); N:M is per row")

    def prune_layer(self, layer, stats, target, backend):
        scope = "row" if target.m else self.scope
        return LayerResult(ops.select_mask(ops.magnitude_score(layer.weight), *target.pattern(), scope=scope,
                                           backend=backend))

    def score_layer(self, layer, stats, backend):
        return ops.magnitude_score(layer.weight)
