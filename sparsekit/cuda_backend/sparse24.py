"""sparse24_matmul on CUDA: sparsekit's mma.sp kernel ("cuda"), cuSPARSELt ("cusparselt") and cuBLAS
on the decompressed weight ("cublas"). Signature of each: impl(x2d (M, K), values, meta, bias) -> (M, N).

cuSPARSELt needs its own compressed blob and cuBLAS a dense copy. Both are derived from (values, meta)
on first use and cached, keyed weakly on `values` (dropped with the weight, rebuilt when values or meta
change in place). The cache trades memory for speed: a cached dense copy costs 2 bytes per weight entry
(3.6x the compressed weight), a cuSPARSELt blob 1.125. SPARSEKIT_SPARSE24_CACHE=0 turns it off: cuBLAS
then decompresses on every call and cuSPARSELt recompresses on every call (only sensible for tests).
Build the caches outside CUDA-graph capture (one warm-up call per shape).
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from sparsekit import backend as _backend

_CACHES: dict[str, WeakTensorKeyDictionary] = {"dense": WeakTensorKeyDictionary(), "cusparselt": WeakTensorKeyDictionary()}
CUSPARSELT_MIN_ROWS = 8  # torch pads the dense operand's rows to a multiple of 8 for 16-bit types


def cache_enabled() -> bool:
    return os.environ.get("SPARSEKIT_SPARSE24_CACHE", "1") != "0"


def clear_prepared_cache() -> None:
    """Drop every cached dense copy and cuSPARSELt blob."""
    for cache in _CACHES.values():
        cache.clear()


def _prepared(kind: str, values: torch.Tensor, meta: torch.Tensor, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    if not cache_enabled():
        return build()
    cache = _CACHES[kind]
    stamp = (meta.data_ptr(), values._version, meta._version)
    entry = cache.get(values)
    if entry is None or entry[0] != stamp:
        entry = (stamp, build())
        cache[values] = entry
    return entry[1]


def _dense(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    return _backend.call("decompress_24", None, values.device, values, meta)


def dense_weight(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense (N, K) weight, cached (see module docstring)."""
    return _prepared("dense", values, meta, lambda: _dense(values, meta))


def cusparselt_blob(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """torch._cslt_compress of the dense weight, cached."""
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the cuSPARSELt provider supports float16/bfloat16 weights, got {values.dtype}")
    return _prepared("cusparselt", values, meta, lambda: torch._cslt_compress(_dense(values, meta)))


def sparse24_matmul_cuda(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """sparsekit's mma.sp kernel (csrc/sparse24): reads values and the CUTLASS meta as they are."""
    from sparsekit import _ext

    if x2d.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the CUDA mma.sp kernel supports float16/bfloat16, got {x2d.dtype}; use backend='triton' or 'torch'")
    if x2d.stride(1) != 1 or x2d.stride(0) % 8 or x2d.data_ptr() % 16:
        x2d = x2d.contiguous()
    return _ext.load().sparse24_mm(x2d, values.contiguous(), meta.contiguous(), bias.contiguous() if bias is not None else None)


def sparse24_matmul_cusparselt(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                               *, alg_id: int | None = None) -> torch.Tensor:
    """torch._cslt_sparse_mm on a cached cuSPARSELt blob, computing (W @ x^T)^T with the transpose fused.

    alg_id None: the algorithm the tuning table recorded for this shape (0 without one).
    """
    from sparsekit.cuda_backend.sparse24_dispatch import cusparselt_alg_id

    blob = cusparselt_blob(values, meta)
    m, k = x2d.shape
    pad = -m % CUSPARSELT_MIN_ROWS
    x = F.pad(x2d, (0, 0, 0, pad)) if pad else x2d.contiguous()
    if alg_id is None:
        alg_id = cusparselt_alg_id(x2d.device, x2d.dtype, m, values.shape[0], k)
    out = torch._cslt_sparse_mm(blob, x.t(), bias=bias, transpose_result=True, alg_id=alg_id)
    return out[:m] if pad else out


def sparse24_matmul_cublas(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """cuBLAS (F.linear) on the dense weight: cached, or decompressed per call with the cache off."""
    return F.linear(x2d, dense_weight(values, meta), bias)
