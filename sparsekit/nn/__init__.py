"""Inference modules for pruned models."""
from sparsekit.nn.sparse_linear import SparseLinear24

__all__ = ["SparseLinear24"]
