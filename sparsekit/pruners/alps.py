"""ALPS (Meng et al., NeurIPS 2024; mazumder-lab/ALPS): ADMM with an adaptive rho that chooses the
mask (top |B| over the whole layer, or N:M), then CG on the support (`sparsekit.ops.alps_prune`)."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import option
from sparsekit.pruners.hessian_op import HessianOpPruner


@dataclass
class AlpsPruner(HessianOpPruner):
    rho: float = option(0.1, "initial ADMM penalty (official 0.1)")
    max_iter: int = option(300, "ADMM iterations at most", parse=int)
    cg_iters: int = option(10, "CG steps on the final support (official 10)", parse=int)
    damp: float = option(0.01, "damping, a fraction of mean(diag H) (official 0.01)")

    op = staticmethod(ops.alps_prune)
