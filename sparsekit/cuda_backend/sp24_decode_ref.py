"""A CPU model of what csrc/sparse24/sp24_decode.cu computes, index for index (no GPU needed).

  plan = decode_plan(n, k, m, num_sms)        # the kernel's work split: tiles, chunks, CTA ranges, roles
  out = sp24_decode_reference(x, values, meta, bias, num_sms)   # the kernel's sums, in its order

The kernel cuts W (N, K) into tiles of `rows` weight rows and each tile into chunks of CHUNK_K columns
(one pipeline stage); the tiles x chunks units, tile-major, are split over grid = min(num_sms, units)
CTAs: CTA b owns units [b U / grid, (b + 1) U / grid). A tile split over CTAs o..l (o, its owner, holds
chunk 0) is summed by whichever of them arrives last at the owner's counter: the fp32 partials of o,
o+1, ..., l in that order (each from its CTA's workspace slot: 0 for the first segment of its range, 1
for the last), then the bias. Meta is decoded as the kernel's
mma.sp sees it and as sp24_decompress writes it (`meta_positions`). The in-chunk sum order inside the
tensor core is the hardware's; here each chunk's partial is one float32 matmul.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

CHUNK_K = 128  # dense K per stage (kKC)
MAX_M = 64     # kSp24DecodeMaxM
MAX_CONSUMER_WARPS = 8
MAX_FRAG = 2 * 8 * 4 * 32


def default_rows(m: int) -> int:
    """The kernel's automatic tile height: 256 rows when M > 16 (n8 tiles >= 4), else 128."""
    return 256 if n8_tiles(m) >= 4 else 128


def n8_tiles(m: int) -> int:
    """Tokens are padded to 8 NT with NT in (1, 2, 4, 8)."""
    if not 1 <= m <= MAX_M:
        raise ValueError(f"sp24_decode takes 1 <= M <= {MAX_M}, got {m}")
    return next(nt for nt in (1, 2, 4, 8) if m <= 8 * nt)


def stage_bytes(rows: int, m: int) -> int:
    """Bytes of one pipeline stage: values (rows x 128 B), meta (4 k32 steps x rows x 4 B), x (8 NT x 256 B)."""
    return rows * CHUNK_K + (CHUNK_K // 32) * rows * 4 + 8 * n8_tiles(m) * CHUNK_K * 2


def workspace_bytes(num_sms: int) -> int:
    """= sp24_decode_workspace_bytes: per-(owner CTA, warp) int32 counters (rounded to 256 B), then two fp32
    partial slots per (CTA, warp)."""
    counters = (num_sms * MAX_CONSUMER_WARPS * 4 + 255) // 256 * 256
    return counters + num_sms * 2 * MAX_CONSUMER_WARPS * MAX_FRAG * 4


@dataclass
class Segment:
    """The chunks [first, last] of tile `tile` that one CTA computes."""
    cta: int
    tile: int
    first: int
    last: int

    @property
    def owner(self) -> bool:
        return self.first == 0


@dataclass
class DecodePlan:
    tiles: int
    chunks: int
    grid: int
    rows: int
    ranges: list[tuple[int, int]]
    segments: list[Segment] = field(default_factory=list)

    def cta_of(self, unit: int) -> int:
        """The kernel's cta_of: ((u + 1) G + U - 1) / U - 1, the CTA whose range holds unit u."""
        units = self.tiles * self.chunks
        return ((unit + 1) * self.grid + units - 1) // units - 1

    def parts(self, tile: int) -> list[tuple[int, int]]:
        """(CTA, workspace slot) of every part of a tile, in the order the last arriver adds them."""
        first = tile * self.chunks
        owner, last = self.cta_of(first), self.cta_of(first + self.chunks - 1)
        return [(q, 1 if q == owner and self.ranges[owner][0] < first else 0) for q in range(owner, last + 1)]

    def split(self, tile: int) -> bool:
        owner, last = self.cta_of(tile * self.chunks), self.cta_of((tile + 1) * self.chunks - 1)
        return owner != last


def decode_plan(n: int, k: int, m: int, num_sms: int, rows: int = 0) -> DecodePlan:
    if n % 32 or k % 32 or n <= 0 or k <= 0:
        raise ValueError(f"sp24_decode needs N % 32 == 0 and K % 32 == 0, got ({n}, {k})")
    rows = rows or default_rows(m)
    tiles = -(-n // rows)
    chunks = -(-k // CHUNK_K)
    units = tiles * chunks
    grid = min(num_sms, units)
    ranges = [(b * units // grid, (b + 1) * units // grid) for b in range(grid)]
    plan = DecodePlan(tiles, chunks, grid, rows, ranges)
    for b, (u0, u1) in enumerate(ranges):
        u = u0
        while u < u1:
            t, c = divmod(u, chunks)
            last = min(chunks - 1, c + (u1 - u) - 1)
            plan.segments.append(Segment(b, t, c, last))
            u += last - c + 1
    return plan


def meta_positions(meta: torch.Tensor) -> torch.Tensor:
    """int64 (N, K/2): the dense K column of every stored value, decoded from torch's CUTLASS meta as read
    by the kernels: word w = 4 i + 2 s + j of (32-row group g, k32 column c) at int16 offset c 2N + 64 g + 2 w
    holds row 32 g + 16 s + i (low half) and row + 8 (high half), K columns 32 c + 16 j + [0, 16)."""
    n, k16 = meta.shape
    k = k16 * 16
    words = meta.contiguous().view(-1).to(torch.int64) & 0xFFFF
    words = words.view(k // 32, n // 32, 32, 2)  # (c, g, w, half)
    w = torch.arange(32)
    i, s, j = w // 4, (w // 2) % 2, w % 2
    pos = torch.empty(n, k // 2, dtype=torch.int64)
    for c in range(k // 32):
        for g in range(n // 32):
            for half in range(2):
                bits = words[c, g, :, half]  # (32,) one 16-bit half per word
                rows = 32 * g + 16 * s + i + 8 * half
                for q in range(4):
                    nib = (bits >> (4 * q)) & 0xF
                    base = 32 * c + 16 * j + 4 * q
                    col = 16 * c + 8 * j + 2 * q
                    pos[rows, col] = base + (nib & 3)
                    pos[rows, col + 1] = base + (nib >> 2)
    return pos


def dense_from_meta(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """sp24_decompress's result: zeros except values scattered to meta_positions."""
    n, half = values.shape
    dense = torch.zeros(n, half * 2, dtype=values.dtype)
    dense.scatter_(1, meta_positions(meta), values)
    return dense


def sp24_decode_reference(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                          num_sms: int, rows: int = 0) -> torch.Tensor:
    """out (M, N) in x's dtype, summed as the kernel sums: per CTA segment an fp32 partial over its chunks,
    the owner's partial plus its contributors' in CTA order, plus the bias, then one rounding."""
    m, k = x.shape
    n = values.shape[0]
    plan = decode_plan(n, k, m, num_sms, rows)
    w = dense_from_meta(values.cpu(), meta.cpu()).float()
    xf = x.cpu().float()
    slots: dict[tuple[int, int], torch.Tensor] = {}  # (CTA, slot) -> fp32 partial, as in the workspace
    whole: dict[int, torch.Tensor] = {}
    for seg in plan.segments:
        r0, r1 = seg.tile * plan.rows, min(n, (seg.tile + 1) * plan.rows)
        acc = torch.zeros(m, r1 - r0)
        for c in range(seg.first, seg.last + 1):
            k0, k1 = c * CHUNK_K, min(k, (c + 1) * CHUNK_K)
            acc += xf[:, k0:k1] @ w[r0:r1, k0:k1].t()
        if plan.split(seg.tile):
            slot = 0 if plan.ranges[seg.cta][0] >= seg.tile * plan.chunks else 1
            assert (seg.cta, slot) not in slots, "a workspace slot written twice"
            slots[seg.cta, slot] = acc
        else:
            whole[seg.tile] = acc
    out = torch.full((m, n), float("nan"))
    for tile in range(plan.tiles):
        r0, r1 = tile * plan.rows, min(n, (tile + 1) * plan.rows)
        if plan.split(tile):
            acc = torch.zeros(m, r1 - r0)
            for part in plan.parts(tile):
                acc += slots[part]
        else:
            acc = whole[tile]
        if bias is not None:
            acc = acc + bias.cpu().float()[r0:r1]
        out[:, r0:r1] = acc
    return out.to(x.dtype)
