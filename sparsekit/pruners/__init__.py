"""Pruning methods by name (sparsekit.pruners.registry). Each is a dataclass whose fields are the method's
options, declared with `option()`."""
from __future__ import annotations

from sparsekit.pruners.base import BlockContext, LayerResult, LayerStats, LayerTarget, Pruner
from sparsekit.pruners.registry import METHODS, make_pruner, pruner_class

PRUNERS: dict[str, type[Pruner]] = {method: pruner_class(method) for method in METHODS}

__all__ = ["PRUNERS", "make_pruner", "pruner_class", "Pruner", "BlockContext", "LayerResult", "LayerStats", "LayerTarget"]
