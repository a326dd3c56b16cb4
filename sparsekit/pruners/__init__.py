"""Pruning methods by name. Each is a dataclass whose fields are the method's options."""
from __future__ import annotations

import dataclasses

from sparsekit.pruners.admm import AdmmPruner
from sparsekit.pruners.alps import AlpsPruner
from sparsekit.pruners.base import BlockContext, LayerResult, LayerStats, LayerTarget, Pruner
from sparsekit.pruners.besa import BesaPruner
from sparsekit.pruners.dsnot import DSnoTPruner
from sparsekit.pruners.magnitude import MagnitudePruner
from sparsekit.pruners.sparsegpt import SparseGPTPruner
from sparsekit.pruners.wanda import WandaPruner

BesaPruner.takes_update = False  # BESA learns masks on whole blocks (its own prune_block); no per-layer update

PRUNERS: dict[str, type[Pruner]] = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
    "besa": BesaPruner,
    "dsnot": DSnoTPruner,
    "admm": AdmmPruner,
    "alps": AlpsPruner,
}


def make_pruner(method: str, **options) -> Pruner:
    try:
        cls = PRUNERS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {sorted(PRUNERS)}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options are {sorted(fields) or 'none'}")
    pruner = cls(**options)
    pruner.check_update()
    return pruner


__all__ = ["PRUNERS", "make_pruner", "Pruner", "BlockContext", "LayerResult", "LayerStats", "LayerTarget"]
