"""CUDA-only implementations: sparsekit's compiled kernels (csrc/, through `sparsekit._ext`) and the
library providers (cuSPARSELt, cuBLAS) that the tuned dispatcher can pick instead of them."""
