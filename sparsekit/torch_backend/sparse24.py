"""Plain-torch 2:4 format: compress / decompress in torch's CUTLASS layout, bitmask packing, matmul.

Layout (identical to `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`
for fp16/bf16): a weight W (N, K) is cut into groups of 4 along K. Each group keeps two entries whose
indices i0 < i1 form a nibble `i0 | i1 << 2`; `values` (N, K/2) holds the kept entries in natural order,
and four consecutive nibbles (16 columns of W) form one int16 of the native meta (N, K/16). That native
meta is then permuted into CUTLASS's `mma.sp` order (`_meta_gather_index`). fp32 uses the same layout
(torch itself treats fp32 as 1:2 pairs; sparsekit keeps one 2:4 layout for every dtype).

Groups with fewer than two nonzeros get torch's fixed encodings (`_NIBBLE_OF_PATTERN`), so a kept slot
may hold a zero. The backends here trust their inputs; `sparsekit.ops.sparse24` validates.
"""
from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from sparsekit.m_buckets import MAX_M_BUCKET, m_bucket  # noqa: F401 (the 2:4 paths key on it; public here too)

# Nonzero pattern of a group (bit j set = entry j is nonzero; comments write bit3..bit0) -> meta nibble (i0 | i1 << 2).
# Exactly-two patterns keep their own two entries; sparser patterns take torch's encodings
# (from the Espresso-minimised table in torch's converter); -1 marks patterns that are not 2:4.
_NIBBLE_OF_PATTERN = (
    0b1110,  # 0000 -> keep 2, 3
    0b1000,  # 0001 -> keep 0, 2
    0b1001,  # 0010 -> keep 1, 2
    0b0100,  # 0011 -> keep 0, 1
    0b1110,  # 0100 -> keep 2, 3
    0b1000,  # 0101 -> keep 0, 2
    0b1001,  # 0110 -> keep 1, 2
    -1,
    0b1110,  # 1000 -> keep 2, 3
    0b1100,  # 1001 -> keep 0, 3
    0b1101,  # 1010 -> keep 1, 3
    -1,
    0b1110,  # 1100 -> keep 2, 3
    -1,
    -1,
    -1,
)


_POPCOUNT = tuple(bin(p).count("1") for p in range(16))
assert sys.byteorder == "little", "group_patterns reads four bool bytes as one little-endian int32"


@functools.lru_cache(maxsize=64)
def _table(entries: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(entries, dtype=torch.int32, device=device)


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """Same-size integer view: gathers and scatters move bits exactly (and run faster than on bf16)."""
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _meta_gather_index(rows: int, meta_cols: int, device: torch.device) -> torch.Tensor:
    """Flat position in the CUTLASS-ordered meta of each native meta element (row-major (rows, meta_cols)).

    CUTLASS `reorder_meta` for 16-bit operands: within each 32-row tile, row m moves to
    m//32*32 + (m%8)*4 + (m%32)//8; then 2x2 blocks are swizzled (Z -> N order) and the result is
    stored ColumnMajorInterleaved<2>.
    """
    r = torch.arange(rows, device=device).unsqueeze(1).expand(rows, meta_cols)
    c = torch.arange(meta_cols, device=device).unsqueeze(0).expand(rows, meta_cols)
    r = r // 32 * 32 + (r % 8) * 4 + (r % 32) // 8
    swap = ((r % 2 == 0) & (c % 2 == 1)).long() - ((r % 2 == 1) & (c % 2 == 0)).long()
    r = r + swap
    c = c - swap
    return ((c // 2) * rows * 2 + r * 2 + c % 2).reshape(-1)


_INDEX_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def meta_gather_index(rows: int, meta_cols: int, device: torch.device) -> torch.Tensor:
    """Cached `_meta_gather_index` (one small int64 tensor per shape and device)."""
    key = (rows, meta_cols, str(device))
    index = _INDEX_CACHE.get(key)
    if index is None:
        if len(_INDEX_CACHE) >= 256:
            _INDEX_CACHE.clear()
        index = _INDEX_CACHE[key] = _meta_gather_index(rows, meta_cols, torch.device(device))
    return index


def group_patterns(weight: torch.Tensor) -> torch.Tensor:
    """int32 (N, K/4): bit j set when entry j of the group of 4 is nonzero (-0.0 counts as zero)."""
    n, k = weight.shape
    # IEEE comparison: -0.0 == 0, so a pruned negative weight (w * 0 = -0.0) is a zero.
    nonzero = (weight != 0).contiguous().view(torch.uint8)
    packed = nonzero.view(n, k // 4, 4).view(torch.int32).squeeze(-1)  # four 0/1 bytes per group, little-endian
    return (packed & 1) | ((packed >> 7) & 2) | ((packed >> 14) & 4) | ((packed >> 21) & 8)


def group_nonzeros(weight: torch.Tensor) -> torch.Tensor:
    """Nonzero count of every group of 4 along K, int32 (N, K/4)."""
    return _table(_POPCOUNT, weight.device)[group_patterns(weight)]


def compress_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K/2), meta int16 (N, K/16) in CUTLASS order) of a 2:4 weight (N, K)."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 4, 4)
    nibble = _table(_NIBBLE_OF_PATTERN, weight.device)[group_patterns(weight)]
    kept = torch.stack((nibble & 0b11, nibble >> 2), dim=-1).long()
    values = _as_bits(groups).gather(-1, kept).view(weight.dtype).reshape(n, k // 2)
    quads = nibble.view(n, k // 16, 4)
    native = quads[..., 0] | quads[..., 1] << 4 | quads[..., 2] << 8 | quads[..., 3] << 12
    native = torch.where(native >= 1 << 15, native - (1 << 16), native).to(torch.int16)
    meta = torch.empty_like(native).view(-1)
    meta.scatter_(0, meta_gather_index(n, k // 16, weight.device), native.view(-1))
    return values.contiguous(), meta.view(n, k // 16)


def kept_indices(meta: torch.Tensor) -> torch.Tensor:
    """Column index within its group of 4 of every stored value: int64 (N, K/4, 2)."""
    n, meta_cols = meta.shape
    native = meta.reshape(-1).gather(0, meta_gather_index(n, meta_cols, meta.device)).view(n, meta_cols)
    native = native.long() & 0xFFFF
    shifts = torch.arange(0, 16, 2, device=meta.device)
    return ((native.unsqueeze(-1) >> shifts) & 0b11).view(n, meta_cols * 4, 2)


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense (N, K) weight with zeros, from values (N, K/2) and CUTLASS-ordered meta (N, K/16)."""
    n, half = values.shape
    bits = _as_bits(values)
    dense = bits.new_zeros(n, half // 2, 4)
    dense.scatter_(-1, kept_indices(meta), bits.reshape(n, half // 2, 2))
    return dense.view(values.dtype).view(n, half * 2)


def kept_mask(meta: torch.Tensor) -> torch.Tensor:
    """Bool (N, K): True where `values` stores an entry (exactly two per group of 4)."""
    idx = kept_indices(meta)
    mask = torch.zeros(*idx.shape[:2], 4, dtype=torch.bool, device=meta.device)
    mask.scatter_(-1, idx, True)
    return mask.view(meta.shape[0], -1)


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """uint8 (N, ceil(K/8)) = numpy.packbits(mask, axis=-1, bitorder="little")."""
    n, k = mask.shape
    padded = F.pad(mask.to(torch.uint8), (0, -k % 8)).view(n, -1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.int32, device=mask.device)
    return (padded.to(torch.int32) * weights).sum(-1).to(torch.uint8)


def unpack_bitmask(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """Bool (N, cols) from a little-endian packed uint8 bitmask (N, ceil(cols/8))."""
    shifts = torch.arange(8, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.view(bitmask.shape[0], -1)[:, :cols].bool()


def sparse24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                    perm: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) [:, perm] @ W.T (+ bias) -> (M, N) in x's dtype: decompress W, then one dense GEMM (perm: index_select)."""
    if perm is not None:
        x = x.index_select(-1, perm)
    return F.linear(x, decompress_24(values, meta), bias)
