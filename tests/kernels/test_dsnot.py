"""Fused Triton DSnoT (triton_kernels/dsnot.py) against the torch backend: masks and final eps
must be identical. Row counts are not multiples of the row block, widths are odd, inputs include ties
(integer values), zero-variance columns, rows with eps exactly 0 and rows with few C < 0 weights
(list exhaustion). Runs natively on a GPU, under the Triton interpreter otherwise.
"""
import pytest
import torch

from sparsekit import ops
from sparsekit.ops.dsnot import initial_error
from tests.helpers import KERNEL_DEVICE, needs_triton

pytestmark = needs_triton
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def problem(rows, cols, sparsity=None, n=0, m=0, dtype=torch.float32, ties=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if ties:
        W = torch.randint(-3, 4, (rows, cols), generator=gen).float()
        mean = torch.randint(-2, 3, (cols,), generator=gen).float()
        var = torch.randint(0, 3, (cols,), generator=gen).float()  # zeros: v = +-inf
    else:
        W = torch.randn(rows, cols, generator=gen)
        mean = torch.randn(cols, generator=gen)
        var = torch.rand(cols, generator=gen) + 0.05
    sq_norm = var + mean.square() + torch.rand(cols, generator=gen)
    W = W.to(dtype)
    keep = ops.wanda_mask(W, sq_norm, sparsity, n, m)
    return [t.to(KERNEL_DEVICE) for t in (W, keep, mean, var, sq_norm)]


def both(W, keep, mean, var, sq_norm, **kwargs):
    kwargs.setdefault("mode", "official")
    got, eps_got = ops.dsnot(W, keep, mean, var, sq_norm, backend="triton", return_error=True, **kwargs)
    want, eps_want = ops.dsnot(W, keep, mean, var, sq_norm, backend="torch", return_error=True, **kwargs)
    assert got.dtype == torch.bool and got.shape == keep.shape
    assert torch.equal(got, want), f"{(got != want).sum().item()} entries differ"
    assert torch.equal(eps_got, eps_want)
    n, m = kwargs.get("n", 0), kwargs.get("m", 0)
    if m:
        assert torch.equal((~got).reshape(got.shape[0], -1, m).sum(-1), torch.full_like((~got).reshape(got.shape[0], -1, m).sum(-1), n))
    else:
        assert torch.equal(got.sum(1), keep.sum(1))
    torch.testing.assert_close(eps_got, initial_error(W, got, mean), rtol=1e-9, atol=1e-6)
    return got


@pytest.mark.parametrize("shape,sparsity,dtype,ties", [
    ((5, 33), 0.1, torch.float32, False),
    ((13, 97), 0.5, torch.float16, False),
    ((17, 130), 0.9, torch.bfloat16, False),
    ((9, 61), 0.6, torch.float32, True),
    ((3, 301), 0.3, torch.float32, False),  # two column tiles in the interpreter layout
])
@pytest.mark.parametrize("mode", ["official", "error"])
def test_unstructured(shape, sparsity, dtype, ties, mode):
    W, keep, mean, var, sq_norm = problem(*shape, sparsity, dtype=dtype, ties=ties)
    got = both(W, keep, mean, var, sq_norm, max_cycles=12, threshold=0.05, mode=mode, seqlen=2)
    if not ties and mode == "official":
        assert (got != keep).any()


@pytest.mark.parametrize("n,m,dtype,ties", [(2, 4, torch.float32, False), (4, 8, torch.bfloat16, False),
                                            (1, 4, torch.float16, False), (2, 4, torch.float32, True)])
@pytest.mark.parametrize("mode", ["official", "error"])
def test_nm(n, m, dtype, ties, mode):
    W, keep, mean, var, sq_norm = problem(11, 64, n=n, m=m, dtype=dtype, ties=ties, seed=m)
    got = both(W, keep, mean, var, sq_norm, max_cycles=10, threshold=0.01, n=n, m=m, mode=mode, seqlen=2)
    if not ties and mode == "official":
        assert (got != keep).any()


@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_error_mode_swaps(n, m):
    """Mean-dominated inputs (seqlen 1, small variance): the error rule finds improving swaps."""
    W, keep, mean, var, sq_norm = problem(13, 72, None if m else 0.5, n=n, m=m, seed=11)
    mean = mean * 4
    sq_norm = mean.square() + 0.01
    keep = ops.wanda_mask(W, sq_norm, None if m else 0.5, n, m)
    got = both(W, keep, mean, var, sq_norm, max_cycles=20, n=n, m=m, mode="error", seqlen=1)
    assert (got != keep).any()


@pytest.mark.parametrize("threshold,same_sign", [(0.0, False), (0.0, True), (1.0, False), (1e6, False)])
def test_thresholds_stop_rows_early_and_late(threshold, same_sign):
    W, keep, mean, var, sq_norm = problem(21, 45, 0.5, seed=3)
    got = both(W, keep, mean, var, sq_norm, max_cycles=16, threshold=threshold, same_sign=same_sign)
    assert torch.equal(got, keep) == (threshold == 1e6)


def test_zero_error_rows_and_exhausted_lists():
    W, keep, mean, var, sq_norm = problem(12, 40, 0.5, seed=4)
    W[0] = 0  # eps exactly 0: the row must not move
    W[1:6] = W[1:6].abs() + 0.1  # only a few C < 0 weights in these rows
    W[1:6, ::9] *= -1
    mean = mean.abs() + 0.1
    keep = ops.wanda_mask(W, sq_norm, 0.5)
    assert initial_error(W, keep, mean)[0].item() == 0.0
    got = both(W, keep, mean, var, sq_norm, max_cycles=30, threshold=0.0)
    assert torch.equal(got[0], keep[0])
    assert (got[1:6] != keep[1:6]).any()


def test_small_tiles_as_on_gpu(monkeypatch):
    """The GPU layout (16-entry lists, 8-row blocks; many tile merges per row) and the GPU's merge
    (tl.sort instead of the hand-written bitonic network) give the torch masks too."""
    from sparsekit.triton_kernels import dsnot

    monkeypatch.setattr(dsnot, "_gpu_layout", lambda: True)
    W, keep, mean, var, sq_norm = problem(11, 75, 0.5, seed=6)
    both(W, keep, mean, var, sq_norm, max_cycles=10, threshold=0.01)
    W, keep, mean, var, sq_norm = problem(9, 48, n=2, m=4, seed=7, ties=True)
    both(W, keep, mean, var, sq_norm, max_cycles=10, threshold=0.01, n=2, m=4)


def test_more_cycles_than_columns():
    W, keep, mean, var, sq_norm = problem(6, 24, 0.5, seed=8)
    both(W, keep, mean, var, sq_norm, max_cycles=100, threshold=0.0)
    both(W, keep, mean, var, sq_norm, max_cycles=0)
