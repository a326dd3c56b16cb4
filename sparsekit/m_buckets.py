"""The token-count bucket that every 2:4 matmul path keys its decisions on: the dispatch table
(cuda_backend/sparse24_dispatch), the launch plans (ops/sparse24_launch, nn), the Triton kernel's autotuning
and the torch reference. It sits below every layer so that all of them import it without climbing one."""
from __future__ import annotations

MAX_M_BUCKET = 512


def m_bucket(m: int) -> int:
    """The token-count bucket: the next power of two of M (1, 2, 4, ..., 256), MAX_M_BUCKET for everything above."""
    return min(1 << (max(1, m) - 1).bit_length(), MAX_M_BUCKET)
