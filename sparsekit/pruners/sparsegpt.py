"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774): OBS pruning with weight reconstruction."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import option
from sparsekit.pruners.hessian_op import HessianOpPruner


@dataclass
class SparseGPTPruner(HessianOpPruner):
    blocksize: int = option(128, "columns pruned and updated together (a multiple of m for N:M)")
    percdamp: float = option(0.01, "damping added to the Hessian's diagonal, a fraction of its mean")

    op = staticmethod(ops.sparsegpt)
    # not an option: True where a method refines the mask afterwards (DSnoT), so the returned weight holds, where
    # pruned, each weight's OBS value when it was pruned, and a regrown weight comes back with it
    keep_pruned_values = False

    def op_options(self) -> dict:
        return {**super().op_options(), "keep_pruned_values": self.keep_pruned_values}
