"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774): OBS pruning with weight reconstruction."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class SparseGPTPruner(Pruner):
    blocksize: int = 128
    percdamp: float = 0.01

    name = "sparsegpt"
    needs_hessian = True

    def prune_layer(self, layer, stats, target, backend):
        sparsity = None if target.m else target.sparsity
        weight, keep = ops.sparsegpt(layer.weight, stats.hessian.hessian.to(layer.weight.device), sparsity,
                                     target.n, target.m, self.blocksize, self.percdamp, backend=backend)
        return LayerResult(keep, weight)
