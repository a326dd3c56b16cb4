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
from sparsekit.checks import check_float_tensor
from sparsekit.ops.sparse24_checks import DTYPES, check_compressed, check_matmul_operands, check_shape_24  # noqa: F401 (public here)
from sparsekit.torch_backend import sparse24 as _ref


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
    check_float_tensor(weight, "weight", "for 2:4")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    check_shape_24(*weight.shape)
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN/Inf; the checkpoint is broken or was loaded in a dtype that overflows")
    message = not_24_message(weight)
    if message:
        raise ValueError(message)
    return _backend.call("compress_24", backend, weight.device, weight)


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
    check_float_tensor(compressed, "compressed", "for 2:4")
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


def sparse24_matmul(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    perm: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """x @ W.T (+ bias) for x (..., K) and a compressed 2:4 weight W (N, K); returns (..., N) in x's dtype.

    perm (K,) int32/int64, an input permutation (`ops.nm_permutation`): computes x[..., perm] @ W.T, the
    weight being stored in permuted column order. The Triton and CUDA kernels gather x by it in their
    loads (no permuted copy of x); the torch reference index_selects.
    Every argument is validated here (metadata only, no host sync; perm's content too when it is on the
    CPU; on a GPU its range by an asynchronous device assert). Under torch.compile the call goes through
    the opaque custom op `sparsekit::sparse24_matmul` (see `sparsekit.ops.sparse24_launch`); in eager mode
    it dispatches directly. `SparseLinear24` uses a cheaper
    path (launch plans).
    """
    n, k = check_matmul_operands(x, values, meta, bias)
    _launch.check_perm_operand(perm, k, x.device)
    if perm is not None and perm.device.type == "cpu":
        from sparsekit.ops.permutation import check_permutation

        check_permutation(perm, k)
    elif perm is not None:  # the kernels read x[perm[j]]: an index out of [0, K) must fail, not read out of bounds
        torch._assert_async(((perm >= 0) & (perm < k)).all(), "perm holds an index outside [0, K)")
    x2d = x.reshape(-1, k)
    if x2d.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], n)
    if torch.compiler.is_compiling():
        out = _launch.sparse24_matmul_op(x2d, values, meta, bias, backend, perm)
    elif perm is None:
        out = _backend.call("sparse24_matmul", backend, x.device, x2d, values, meta, bias)
    else:
        out = _backend.call("sparse24_matmul", backend, x.device, x2d, values, meta, bias, perm=perm)
    return out.reshape(*x.shape[:-1], n)
