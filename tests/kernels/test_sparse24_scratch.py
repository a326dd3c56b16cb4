"""The cublas provider's dense scratch: one buffer per (device, stream, dtype), grown to the largest weight,
reused for smaller ones; no dense copy kept per weight. Runs on CPU (torch decompression into the scratch)."""
import torch

from sparsekit import ops
from sparsekit.cuda_backend import sparse24 as providers


def random_24(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    keep = w.abs().view(n, k // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, keep, True).view(n, k)
    return (w * mask).to(torch.bfloat16)


def test_one_growing_scratch_serves_every_weight():
    providers.clear_prepared_cache()
    try:
        seen = set()
        for i, (n, k) in enumerate([(64, 128), (160, 256), (96, 64), (160, 256)]):
            w = random_24(n, k, seed=i)
            values, meta = ops.compress_24(w)
            x = torch.randn(3, k).to(torch.bfloat16)
            out = providers.sparse24_matmul_cublas(x, values, meta, None)
            torch.testing.assert_close(out.float(), x.float() @ w.float().t(), rtol=2e-2, atol=2e-2)
            seen.add(providers.dense_scratch(values.device, values.dtype, 1, 1).data_ptr())
        assert providers.scratch_bytes() == 160 * 256 * 2, "one scratch, sized to the largest weight"
        assert len(seen) <= 2, "the scratch is reallocated only when a larger weight arrives"
        assert providers.decompress_into_scratch(values, meta).equal(w)
    finally:
        providers.clear_prepared_cache()
    assert providers.scratch_bytes() == 0
