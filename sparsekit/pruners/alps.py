"""ALPS (Meng et al., NeurIPS 2024; mazumder-lab/ALPS): ADMM with an adaptive rho that chooses the
mask (top |B| over the whole layer, or N:M), then CG on the support (`sparsekit.ops.alps_prune`)."""
from dataclasses import dataclass, field

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class AlpsPruner(Pruner):
    rho: float = field(default=0.1, metadata={"help": "initial ADMM penalty (official 0.1)"})
    max_iter: int = field(default=300, metadata={"parse": int, "help": "ADMM iterations at most"})
    cg_iters: int = field(default=10, metadata={"parse": int, "help": "CG steps on the final support (official 10)"})
    damp: float = field(default=0.01, metadata={"help": "damping, a fraction of mean(diag H) (official 0.01)"})

    name = "alps"
    needs_hessian = True

    def prune_layer(self, layer, stats, target, backend):
        sparsity = None if target.m else target.sparsity
        weight, keep = ops.alps_prune(layer.weight, stats.hessian.hessian.to(layer.weight.device), sparsity,
                                      target.n, target.m, damp=self.damp, rho=self.rho, max_iter=self.max_iter,
                                      cg_iters=self.cg_iters, backend=backend)
        return LayerResult(keep, weight)
