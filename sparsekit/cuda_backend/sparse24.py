"""sparse24_matmul on CUDA. Providers, each impl(x2d (M, K), values, meta, bias, perm=None) -> (M, N)
(perm (K,) int32: x2d[:, perm] is multiplied; "cuda" gathers it in its kernels' x loads, the others index_select):

  "cuda"        sparsekit's kernels (csrc/sparse24): sp24_decode (persistent, stream-K mma.sp) for M <= 64,
                the tiled mma.sp kernel (sp24_mm) above. Reads values and the CUTLASS meta as they are.
  "cublas"      decompress into ONE reusable scratch buffer per (device, stream, dtype), grown to the
                largest weight seen, then cuBLAS (F.linear). No dense copy is ever kept per weight.
  "cusparselt"  torch._cslt_sparse_mm. torch rebuilds its plan on every call (hundreds of µs of host time)
                and needs its own compressed blob, which is rebuilt per call too (never cached: a blob is
                another 1.125 NK bytes per weight). Explicit use only: not a dispatcher candidate.

Workspaces and scratch are created on first use for the current stream; create them before CUDA-graph
capture (one warm-up call per stream, or `prepare(device)`), so the graph replays the same buffers.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from sparsekit.torch_backend.sparse24 import decompress_24 as _torch_decompress_24

DECODE_MAX_M = 64  # sp24_decode's limit (csrc/sparse24/sparse24.h kSp24DecodeMaxM)
CUSPARSELT_MIN_ROWS = 8  # torch pads the dense operand's rows to a multiple of 8 for 16-bit types

_LOCK = threading.Lock()
_WORKSPACES: dict[tuple[int, int], torch.Tensor] = {}
_SCRATCH: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}


def _ext():
    from sparsekit import _ext as ext

    return ext.load()


def _stream_key(device: torch.device) -> tuple[int, int]:
    """(device index, current stream handle); (-1, 0) off CUDA (one scratch, e.g. for CPU tests)."""
    if device.type != "cuda":
        return -1, 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


def _device_of(key: tuple[int, int], device: torch.device) -> torch.device:
    return torch.device("cuda", key[0]) if device.type == "cuda" else device


def decode_workspace(device) -> torch.Tensor:
    """sp24_decode's workspace for the current stream of `device` (zero-filled once; every call leaves its counters zero)."""
    device = torch.device(device)
    key = _stream_key(device)
    ws = _WORKSPACES.get(key)
    if ws is None:
        with _LOCK:
            ws = _WORKSPACES.get(key)
            if ws is None:
                num_sms = torch.cuda.get_device_properties(key[0]).multi_processor_count
                ws = torch.zeros(_ext().sp24_decode_workspace_bytes(num_sms), dtype=torch.uint8,
                                 device=torch.device("cuda", key[0]))
                _WORKSPACES[key] = ws
    return ws


def dense_scratch(device, dtype: torch.dtype, n: int, k: int) -> torch.Tensor:
    """An (n, k) view of the reusable scratch of (device, current stream, dtype), grown when too small."""
    device = torch.device(device)
    key = (*_stream_key(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < n * k:
        with _LOCK:
            buf = _SCRATCH.get(key)
            if buf is None or buf.numel() < n * k:
                _SCRATCH.pop(key, None)  # free the smaller one before allocating the larger
                buf = torch.empty(n * k, dtype=dtype, device=_device_of(key, device))
                _SCRATCH[key] = buf
    return buf[: n * k].view(n, k)


def prepare(device, dtype: torch.dtype = torch.bfloat16, max_weight: tuple[int, int] | None = None) -> None:
    """Create the current stream's decode workspace (and a scratch for `max_weight` (N, K)) before graph capture."""
    decode_workspace(device)
    if max_weight is not None:
        dense_scratch(device, dtype, *max_weight)


def clear_prepared_cache() -> None:
    """Drop every workspace and scratch buffer (they are recreated on the next call)."""
    with _LOCK:
        _WORKSPACES.clear()
        _SCRATCH.clear()


def scratch_bytes() -> int:
    """Bytes held by the dense scratch buffers (all devices and streams)."""
    return sum(b.numel() * b.element_size() for b in _SCRATCH.values())


def _check_16bit(x2d: torch.Tensor, what: str) -> None:
    if x2d.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the {what} supports float16/bfloat16, got {x2d.dtype}; use backend='triton' or 'torch'")


def _aligned_x(x2d: torch.Tensor) -> torch.Tensor:
    if x2d.stride(1) != 1 or x2d.stride(0) % 8 or x2d.data_ptr() % 16:
        return x2d.contiguous()
    return x2d


def _kernel_perm(perm: torch.Tensor | None) -> torch.Tensor | None:
    """perm as the kernels read it: contiguous, 16-byte aligned int32 (copied only when it is not)."""
    if perm is None or (perm.dtype == torch.int32 and perm.is_contiguous() and perm.data_ptr() % 16 == 0):
        return perm
    return perm.to(torch.int32).clone(memory_format=torch.contiguous_format)


def sparse24_decode(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                    *, rows: int = 0, stages: int = 0, perm: torch.Tensor | None = None) -> torch.Tensor:
    """sp24_decode (M <= 64): rows 128/256 and stages 2..8 pick a configuration (0: automatic); perm gathers x."""
    _check_16bit(x2d, "CUDA mma.sp kernel")
    _ext()  # registers torch.ops.sparsekit
    return torch.ops.sparsekit.sp24_linear(_aligned_x(x2d), values.contiguous(), meta.contiguous(),
                                           bias.contiguous() if bias is not None else None,
                                           decode_workspace(x2d.device), rows, stages, _kernel_perm(perm))


def sparse24_matmul_cuda(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                         perm: torch.Tensor | None = None) -> torch.Tensor:
    """sparsekit's mma.sp kernels: sp24_decode for M <= 64, the tiled sp24_mm above (both gather x by perm)."""
    _check_16bit(x2d, "CUDA mma.sp kernel")
    if x2d.shape[0] <= DECODE_MAX_M and x2d.shape[1] % 32 == 0:
        return sparse24_decode(x2d, values, meta, bias, perm=perm)
    _ext()
    return torch.ops.sparsekit.sp24_mm(_aligned_x(x2d), values.contiguous(), meta.contiguous(),
                                       bias.contiguous() if bias is not None else None, _kernel_perm(perm))


def decompress_into_scratch(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense (N, K) weight in the shared scratch buffer: valid until the next call on this stream."""
    n, k = values.shape[0], values.shape[1] * 2
    out = dense_scratch(values.device, values.dtype, n, k)
    if values.dtype in (torch.float16, torch.bfloat16) and n % 32 == 0 and k % 32 == 0:
        try:
            _ext()
        except RuntimeError:
            pass  # no extension: the torch decompression below
        else:
            torch.ops.sparsekit.sp24_decompress(values.contiguous(), meta.contiguous(), out)
            return out
    out.copy_(_torch_decompress_24(values, meta))  # providers never re-enter backend.call
    return out


def sparse24_matmul_cublas(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                           perm: torch.Tensor | None = None) -> torch.Tensor:
    """cuBLAS (F.linear) on the weight decompressed into the reusable scratch (no per-weight dense copy)."""
    if perm is not None:
        x2d = x2d.index_select(1, perm)
    return F.linear(x2d, decompress_into_scratch(values, meta), bias)


def sparse24_matmul_cusparselt(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                               perm: torch.Tensor | None = None, *, alg_id: int = 0) -> torch.Tensor:
    """torch._cslt_sparse_mm, computing (W @ x^T)^T with the transpose fused. Compresses W on every call
    (no blob cache) and torch plans on every call: for comparisons, not for inference."""
    _check_16bit(x2d, "cuSPARSELt provider")
    if perm is not None:
        x2d = x2d.index_select(1, perm)
    blob = torch._cslt_compress(decompress_into_scratch(values, meta))
    m = x2d.shape[0]
    pad = -m % CUSPARSELT_MIN_ROWS
    x = F.pad(x2d, (0, 0, 0, pad)) if pad else x2d.contiguous()
    out = torch._cslt_sparse_mm(blob, x.t(), bias=bias, transpose_result=True, alg_id=alg_id)
    return out[:m] if pad else out
