"""Fused Triton DSnoT exact mode (triton_kernels/dsnot_exact.py) against the torch backend: identical
masks on odd widths, several column tiles, N:M with M in {4, 8}, fp32/fp16/bf16 weights, a dense
reference that differs from the weight (SparseGPT's updated values), and rows that stop early.
Runs natively on a GPU, under the Triton interpreter otherwise."""
import pytest
import torch

from sparsekit import ops
from tests.helpers import KERNEL_DEVICE, needs_triton

pytestmark = needs_triton


def problem(rows, cols, sparsity=None, n=0, m=0, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * cols, cols, generator=gen) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=gen) / cols**0.5)
    X = X + 0.2 * torch.randn(cols, generator=gen)
    W = torch.randn(rows, cols, generator=gen).to(dtype)
    stats = ops.ActivationStats(cols).update(X.unsqueeze(0))
    keep = ops.wanda_mask(W, stats.sq_norm, sparsity, n, m)
    tensors = (W, keep, stats.mean.float(), stats.var.float(), stats.sq_norm.float(), X.t() @ X)
    return [t.to(KERNEL_DEVICE) for t in tensors]


def both(W, keep, mean, var, sq_norm, H, **kwargs):
    got = ops.dsnot(W, keep, mean, var, sq_norm, mode="exact", hessian=H, backend="triton", **kwargs)
    want = ops.dsnot(W, keep, mean, var, sq_norm, mode="exact", hessian=H, backend="torch", **kwargs)
    assert got.dtype == torch.bool and got.shape == keep.shape
    assert torch.equal(got, want), f"{(got != want).sum().item()} entries differ"
    return got


@pytest.mark.parametrize("shape,sparsity,dtype", [
    ((5, 33), 0.1, torch.float32),
    ((7, 97), 0.5, torch.float16),
    ((6, 130), 0.9, torch.bfloat16),
    ((3, 1100), 0.6, torch.float32),  # two column tiles
])
def test_unstructured(shape, sparsity, dtype):
    W, keep, *rest = problem(*shape, sparsity, dtype=dtype)
    got = both(W, keep, *rest, max_cycles=12)
    assert torch.equal(got.sum(1), keep.sum(1))
    if 0.3 < sparsity < 0.8:
        assert not torch.equal(got, keep)  # swaps were made, so the comparison is not vacuous


@pytest.mark.parametrize("n,m,cols", [(2, 4, 64), (4, 8, 96), (1, 4, 1028)])
def test_nm(n, m, cols):
    W, keep, *rest = problem(5, cols, n=n, m=m, seed=m)
    got = both(W, keep, *rest, n=n, m=m, max_cycles=10)
    assert ((~got).view(5, -1, m).sum(-1) == n).all()


def test_updated_weights_against_the_dense_reference_and_early_stop():
    W0, keep, mean, var, sq_norm, H = problem(6, 80, 0.5, seed=3)
    W = W0 + 0.3 * torch.randn_like(W0)
    both(W, keep, mean, var, sq_norm, H, reference=W0, max_cycles=200)  # rows stop long before 200 swaps


def test_non_power_of_two_m_runs_in_torch_when_automatic():
    W, keep, mean, var, sq_norm, H = problem(3, 36, n=1, m=3)
    with pytest.raises(ValueError, match="power of two"):
        ops.dsnot(W, keep, mean, var, sq_norm, mode="exact", hessian=H, n=1, m=3, backend="triton")
    assert ops.dsnot(W, keep, mean, var, sq_norm, mode="exact", hessian=H, n=1, m=3).shape == keep.shape
