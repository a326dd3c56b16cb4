"""ADMM pruning (Boza, arXiv 2401.02938; fmfi-compbio/admm-pruning): the mask is chosen from |B + U|
while ADMM updates the weights (`sparsekit.ops.admm_prune`), with the official defaults."""
from dataclasses import dataclass

from sparsekit import ops
from sparsekit.pruners.base import option
from sparsekit.pruners.hessian_op import HessianOpPruner


@dataclass
class AdmmPruner(HessianOpPruner):
    per_out: bool = option(False, "unstructured: prune per output row on the cubic gradual schedule (the official "
                                  "default, off, prunes over the whole layer at the final sparsity from the first step)")
    iterative_prune: int = option(15, "iterations that re-choose the mask (0: one Wanda-score mask, then fixed-mask ADMM)",
                                  parse=int)
    iters: int = option(20, "ADMM iterations", parse=int)
    percdamp: float = option(0.1, "damping, a fraction of the mean normalised diagonal")

    op = staticmethod(ops.admm_prune)
