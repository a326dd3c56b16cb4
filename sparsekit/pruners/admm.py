"""ADMM pruning (Boza, arXiv 2401.02938; fmfi-compbio/admm-pruning): the mask is chosen from |B + U|
while ADMM updates the weights (`sparsekit.ops.admm_prune`), with the official defaults."""
from dataclasses import dataclass, field

from sparsekit import ops
from sparsekit.pruners.base import LayerResult, Pruner


@dataclass
class AdmmPruner(Pruner):
    per_out: bool = field(default=False, metadata={
        "help": "unstructured: prune per output row on the cubic gradual schedule (the official default, off, "
                "prunes over the whole layer at the final sparsity from the first step)"})
    iterative_prune: int = field(default=15, metadata={
        "parse": int, "help": "iterations that re-choose the mask (0: one Wanda-score mask, then fixed-mask ADMM)"})
    iters: int = field(default=20, metadata={"parse": int, "help": "ADMM iterations"})
    percdamp: float = field(default=0.1, metadata={"help": "damping, a fraction of the mean normalised diagonal"})

    name = "admm"
    needs_hessian = True

    def prune_layer(self, layer, stats, target, backend):
        sparsity = None if target.m else target.sparsity
        weight, keep = ops.admm_prune(layer.weight, stats.hessian.hessian.to(layer.weight.device), sparsity,
                                      target.n, target.m, percdamp=self.percdamp, iterative_prune=self.iterative_prune,
                                      iters=self.iters, per_out=self.per_out, backend=backend)
        return LayerResult(keep, weight)
