"""2:4 inference ops: the compressed format, its converters and the 2:4 matmul.

Format (see `sparsekit.torch_backend.sparse24` for the bit layout): a 2:4 weight W (N, K) is stored as
`values` (N, K/2), the kept entries in natural order, and `meta` int16 (N, K/16) in torch's CUTLASS
layout: bit-exact with `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`
for fp16/bf16. fp32 weights use the same layout (torch's own converter treats fp32 as 1:2 pairs
with (N, K/8) meta; sparsekit does not). Shapes must satisfy N % 32 == 0 and K % 64 == 0.

`sparse24_matmul(x, values, meta, bias)` computes x @ W.T (+ bias). Backend implementations have
the signature `impl(x2d, values, meta, bias) -> (M, N)` in x's dtype, where x2d is a 2-D (M, K)
tensor with arbitrary strides (M >= 1) and every argument has been validated here.
"""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.ops import sparse24_launch as _launch
from sparsekit.torch_backend import sparse24 as _ref

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ROW_MULTIPLE = 32   # N: one CUTLASS meta tile covers 32 rows
COL_MULTIPLE = 64   # K: torch's semi-structured minimum for 16-bit types


def _check_float(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 for 2:4, got {t.dtype}; cast it with .to(torch.bfloat16)")


def check_shape_24(rows: int, cols: int, name: str = "weight") -> None:
    """N % 32 == 0 and K % 64 == 0, or an error telling how much to pad."""
    bad = []
    if rows % ROW_MULTIPLE:
        bad.append(f"out_features N={rows} is not a multiple of {ROW_MULTIPLE} (pad {-rows % ROW_MULTIPLE} zero rows)")
    if cols % COL_MULTIPLE:
        bad.append(f"in_features K={cols} is not a multiple of {COL_MULTIPLE} (pad {-cols % COL_MULTIPLE} zero columns)")
    if bad:
        raise ValueError(
            f"{name} of shape ({rows}, {cols}) does not fit the 2:4 CUTLASS layout: " + "; ".join(bad) + ". "
            "Pad with torch.nn.functional.pad(weight, (0, pad_cols, 0, pad_rows)), pad x's last dim with zeros "
            "the same way and slice the extra output columns off, or keep this layer dense"
        )


def not_24_message(weight: torch.Tensor, name: str = "weight") -> str | None:
    """None if every group of 4 along K has at most 2 nonzeros (-0.0 is zero), else where it fails."""
    counts = _ref.group_nonzeros(weight)
    bad = counts > 2
    nbad = int(bad.sum())
    if not nbad:
        return None
    row, group = (int(i) for i in bad.nonzero()[0])
    return (
        f"{name} is not 2:4 sparse: {nbad} of {counts.numel()} groups of 4 along in_features have more than 2 "
        f"nonzeros (first: row {row}, columns {4 * group}..{4 * group + 3} has {int(counts[row, group])}); "
        "prune it with pattern '2:4' first (sparsekit.prune(model, calib, PruneConfig(pattern='2:4')))"
    )


def compress_24(weight: torch.Tensor, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K/2), meta int16 (N, K/16)) of a 2:4-sparse weight (N, K) = (out, in)."""
    _check_float(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    check_shape_24(*weight.shape)
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN/Inf; the checkpoint is broken or was loaded in a dtype that overflows")
    message = not_24_message(weight)
    if message:
        raise ValueError(message)
    return _backend.call("compress_24", backend, weight.device, weight)


def check_compressed(values: torch.Tensor, meta: torch.Tensor) -> tuple[int, int]:
    """Validate a (values, meta) pair; returns the dense (N, K)."""
    _check_float(values, "values")
    if not isinstance(meta, torch.Tensor):
        raise TypeError(f"meta must be a torch.Tensor, got {type(meta).__name__}")
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D (N, K/2), got shape {tuple(values.shape)}")
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16 (torch's CUTLASS layout for 16-bit values), got {meta.dtype}; build it with compress_24")
    n, k = values.shape[0], values.shape[1] * 2
    if tuple(meta.shape) != (n, k // 16):
        raise ValueError(f"meta must have shape (N, K/16) = ({n}, {k // 16}) for values of shape {tuple(values.shape)}, got {tuple(meta.shape)}")
    if meta.device != values.device:
        raise ValueError(f"values is on {values.device} but meta is on {meta.device}; move both with .to(device)")
    check_shape_24(n, k, name="the dense weight")
    return n, k


def decompress_24(values: torch.Tensor, meta: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """The dense (N, K) weight with zeros: exact inverse of compress_24 (-0.0 in pruned slots reads back as +0.0)."""
    check_compressed(values, meta)
    idx = _ref.kept_indices(meta)
    if not bool((idx[..., 0] < idx[..., 1]).all()):
        raise ValueError("meta is corrupt: some group stores the same column twice; it was not produced by compress_24")
    return _backend.call("decompress_24", backend, values.device, values, meta)


def to_bitmask_24(values: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """compressed-tensors `sparse-24-bitmask` triple (compressed (N, K/2), bitmask uint8 (N, ceil(K/8)), shape).

    The bitmask marks exactly the stored slots (two per group), as compressed-tensors' own writer does,
    so `compressed` equals `values` byte for byte.
    """
    n, k = check_compressed(values, meta)
    return values, _ref.pack_bitmask(_ref.kept_mask(meta)), (n, k)


def bitmask_to_dense(compressed: torch.Tensor, bitmask: torch.Tensor, shape) -> torch.Tensor:
    """Dense weight of a compressed-tensors bitmask entry: `compressed` scattered row-major into the set bits."""
    if isinstance(shape, torch.Tensor):
        shape = shape.reshape(-1).tolist()
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (rows, cols), got {shape}")
    rows, cols = shape
    if not isinstance(bitmask, torch.Tensor) or bitmask.dtype != torch.uint8:
        raise TypeError(f"bitmask must be a uint8 tensor (numpy.packbits little-endian), got {getattr(bitmask, 'dtype', type(bitmask).__name__)}")
    if tuple(bitmask.shape) != (rows, -(-cols // 8)):
        raise ValueError(f"bitmask must have shape (rows, ceil(cols/8)) = ({rows}, {-(-cols // 8)}) for shape {shape}, got {tuple(bitmask.shape)}")
    _check_float(compressed, "compressed")
    mask = _ref.unpack_bitmask(bitmask, cols)
    kept = int(mask.sum())
    if kept != compressed.numel():
        raise ValueError(f"bitmask marks {kept} entries but compressed holds {compressed.numel()}; the checkpoint is inconsistent")
    dense = torch.zeros(shape, dtype=compressed.dtype, device=compressed.device)
    dense[mask] = compressed.reshape(-1).to(dense.device)
    return dense


def from_bitmask_24(compressed: torch.Tensor, bitmask: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) from a compressed-tensors `sparse-24-bitmask` triple (refuses masks that are not 2:4)."""
    return compress_24(bitmask_to_dense(compressed, bitmask, shape))


def check_matmul_operands(x, values, meta, bias) -> tuple[int, int]:
    """Validate sparse24_matmul's operands without touching their data (no host sync); returns (N, K)."""
    n, k = check_compressed(values, meta)
    _check_float(x, "x")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have shape (..., K) with K={k} (in_features of the weight), got {tuple(x.shape)}")
    if x.dtype != values.dtype:
        raise TypeError(f"x is {x.dtype} but the weight values are {values.dtype}; cast x with .to({values.dtype})")
    if x.device != values.device:
        raise ValueError(f"x is on {x.device} but the weight is on {values.device}; move them to one device")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"bias must be a 1-D tensor of {n} entries (out_features), got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"bias must match x ({x.dtype} on {x.device}), got {bias.dtype} on {bias.device}")
    return n, k


def sparse24_matmul(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """x @ W.T (+ bias) for x (..., K) and a compressed 2:4 weight W (N, K); returns (..., N) in x's dtype.

    Every argument is validated here (metadata only, no host sync). Under torch.compile the call goes
    through the opaque custom op `sparsekit::sparse24_matmul` (see `sparsekit.ops.sparse24_launch`);
    in eager mode it dispatches directly. `SparseLinear24` uses a cheaper path (launch plans).
    """
    n, k = check_matmul_operands(x, values, meta, bias)
    x2d = x.reshape(-1, k)
    if x2d.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], n)
    if torch.compiler.is_compiling():
        out = _launch.sparse24_matmul_op(x2d, values, meta, bias, backend)
    else:
        out = _backend.call("sparse24_matmul", backend, x.device, x2d, values, meta, bias)
    return out.reshape(*x.shape[:-1], n)
