"""sparsekit's functional contract: the ops other pruning tools can call.

Masks are bool tensors with True = kept; sparsity is the fraction pruned. Every op takes
`backend=None|"torch"|"triton"|"cuda"`; None lets `sparsekit.backend` pick the best available.
Inputs are checked in these wrappers once, so each backend implementation can assume valid
arguments. One file per family of ops; this module re-exports them all.
"""
from sparsekit.ops.selection import magnitude_score, select_mask, wanda_mask, wanda_score
from sparsekit.ops.sparsegpt import sparsegpt
from sparsekit.stats import ActivationStats, HessianStats

__all__ = [
    "ActivationStats",
    "HessianStats",
    "magnitude_score",
    "wanda_score",
    "select_mask",
    "wanda_mask",
    "sparsegpt",
]
