"""Methods that are one `sparsekit.ops` call on a layer's weight and input Hessian: SparseGPT, ADMM, ALPS.

Each subclass names its op (`op`: weight, hessian, sparsity, n, m, **options -> (weight, keep)); its own
dataclass fields (all but Pruner's `update` / `update_iters`) are passed to the op by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

from sparsekit.pruners.base import LayerResult, Pruner

BASE_OPTIONS = frozenset(f.name for f in dataclasses.fields(Pruner))


@dataclass
class HessianOpPruner(Pruner):
    op: ClassVar[Callable]
    needs_hessian = True

    def op_options(self) -> dict:
        """The keyword options this method passes to its op: its own fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in BASE_OPTIONS}

    def prune_layer(self, layer, stats, target, backend):
        hessian = stats.hessian.hessian.to(layer.weight.device)
        weight, keep = self.op(layer.weight, hessian, *target.pattern(), backend=backend, **self.op_options())
        return LayerResult(keep, weight)
