"""sparsekit's functional contract: the ops other pruning tools can call.

Masks are bool tensors with True = kept; sparsity is the fraction pruned. Every op takes
`backend=None|"torch"|"triton"|"cuda"`; None lets `sparsekit.backend` pick the best available.
Inputs are checked in these wrappers once, so each backend implementation can assume valid
arguments. One file per family of ops; this module re-exports them all.
"""
from sparsekit.ops.besa_masked_linear import (besa_masked_linear, candidate_prune_counts, candidate_sparsities,
                                             expected_sparsity, prune_counts, rank_buckets, reachable_sparsity,
                                             row_ranks, sparsity_probabilities, target_log_prior)
from sparsekit.ops.dsnot import dsnot
from sparsekit.ops.permutation import nm_permutation, permuted_nm_mask
from sparsekit.ops.reconstruct import admm_prune, alps_prune, reconstruct
from sparsekit.ops.selection import magnitude_score, select_mask, wanda_mask, wanda_score
from sparsekit.ops.sparsegpt import sparsegpt, sparsegpt_saliency
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
    "sparsegpt_saliency",
    "dsnot",
    "nm_permutation",
    "permuted_nm_mask",
    "reconstruct",
    "admm_prune",
    "alps_prune",
    "besa_masked_linear",
    "row_ranks",
    # BESA's parametrisation of learned sparsity (candidates, probabilities, prune counts), see ops/besa_masked_linear.py
    "candidate_sparsities",
    "candidate_prune_counts",
    "rank_buckets",
    "sparsity_probabilities",
    "expected_sparsity",
    "prune_counts",
    "target_log_prior",
    "reachable_sparsity",
    "compress_24",
    "decompress_24",
    "to_bitmask_24",
    "from_bitmask_24",
    "sparse24_matmul",
]
