"""sparsekit's functional contract: the ops other pruning tools can call.

Masks are bool tensors with True = kept; sparsity is the fraction pruned. Every op takes
`backend=None|"torch"|"triton"|"cuda"`; None lets `sparsekit.backend` pick the best available.
Inputs are checked in these wrappers once, so each backend implementation can assume valid
arguments. One file per family of ops; this module re-exports them all.
"""
from sparsekit.ops.besa import besa_masked_linear, row_ranks
from sparsekit.ops.dsnot import dsnot
from sparsekit.ops.permutation import nm_permutation, permuted_nm_mask
from sparsekit.ops.reconstruct import admm_prune, alps_prune, reconstruct
from sparsekit.ops.selection import magnitude_score, select_mask, wanda_mask, wanda_score
from sparsekit.ops.sparsegpt import sparsegpt
from sparsekit.ops.sparse24 import compress_24, decompress_24, from_bitmask_24, sparse24_matmul, to_bitmask_24
from sparsekit.ops.stats import ActivationStats, HessianStats

__all__ = [
    "ActivationStats",
    "HessianStats",
    "magnitude_score",
    "wanda_score",
    "select_mask",
    "wanda_mask",
    "sparsegpt",
    "dsnot",
    "nm_permutation",
    "permuted_nm_mask",
    "reconstruct",
    "admm_prune",
    "alps_prune",
    "besa_masked_linear",
    "row_ranks",
    "compress_24",
    "decompress_24",
    "to_bitmask_24",
    "from_bitmask_24",
    "sparse24_matmul",
]
