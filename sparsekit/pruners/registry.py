"""Pruning methods by name: name -> "module:Class", imported on first use (as sparsekit.backend's ops and
sparsekit.allocation's allocations), so that a method built from other methods (DSnoT's initial mask, BESA's
in-row method) gets them from `make_pruner` here without an import cycle."""
from __future__ import annotations

import dataclasses
import importlib

from sparsekit.pruners.base import Pruner

METHODS = {
    "magnitude": "sparsekit.pruners.magnitude:MagnitudePruner",
    "wanda": "sparsekit.pruners.wanda:WandaPruner",
    "sparsegpt": "sparsekit.pruners.sparsegpt:SparseGPTPruner",
    "besa": "sparsekit.pruners.besa:BesaPruner",
    "dsnot": "sparsekit.pruners.dsnot:DSnoTPruner",
    "admm": "sparsekit.pruners.admm:AdmmPruner",
    "alps": "sparsekit.pruners.alps:AlpsPruner",
}


def pruner_class(method: str) -> type[Pruner]:
    try:
        module, _, name = METHODS[method.lower()].partition(":")
    except KeyError:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {sorted(METHODS)}") from None
    return getattr(importlib.import_module(module), name)


def make_pruner(method: str, **options) -> Pruner:
    """The method's pruner with these options (its dataclass fields); unknown names and bad updates raise."""
    cls = pruner_class(method)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options are {sorted(fields) or 'none'}")
    pruner = cls(**options)
    pruner.check_update()
    return pruner
