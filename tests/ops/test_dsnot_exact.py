"""ops.dsnot(mode="exact"): swaps by the exact change of (W0 - W*M) H (W0 - W*M)^T, against a
per-row fp64 loop that recomputes the error from scratch every cycle."""
import pytest
import torch

from sparsekit import ops


def problem(rows, cols, sparsity=None, n=0, m=0, seed=0, dtype=torch.float32, tokens=None):
    gen = torch.Generator().manual_seed(seed)
    tokens = tokens or 3 * cols
    mix = torch.eye(cols) + 0.4 * torch.randn(cols, cols, generator=gen) / cols ** 0.5
    X = torch.randn(tokens, cols, generator=gen) @ mix + 0.3 * torch.randn(cols, generator=gen)
    W = torch.randn(rows, cols, generator=gen).to(dtype)
    stats = ops.ActivationStats(cols).update(X.unsqueeze(0))
    keep = ops.wanda_mask(W, stats.sq_norm, sparsity, n, m)
    return W, keep, stats, X.t() @ X, X


def row_reference(w, keep, w0, H, T, m):
    """One row, fp64, error recomputed from the mask each cycle; same pair rule as the op."""
    keep = keep.clone()
    w, w0, H = w.double(), w0.double(), H.double()

    def error(k):
        d = w0 - torch.where(k, w, 0)
        return d @ H @ d

    for _ in range(T):
        d = w0 - torch.where(keep, w, 0)
        r = d @ H
        grow = torch.where(keep, torch.inf, w * w * H.diagonal() - 2 * w * r)
        prune = torch.where(keep, w * w * H.diagonal() + 2 * w * r, torch.inf)
        if m:
            gg, qq = grow.view(-1, m), prune.view(-1, m)
            group = (gg.min(1).values + qq.min(1).values).argmin()
            g, q = group * m + gg[group].argmin(), group * m + qq[group].argmin()
        else:
            g, q = grow.argmin(), prune.argmin()
        trial = keep.clone()
        trial[g], trial[q] = True, False
        if not error(trial) < error(keep):
            break
        keep = trial
    return keep


def reconstruction(W0, W, keep, X):
    return (((W0.double() - torch.where(keep, W.double(), 0)) @ X.double().t()) ** 2).sum(1)


@pytest.mark.parametrize("rows,cols,sparsity,n,m,T", [
    (13, 97, 0.5, 0, 0, 30),
    (9, 64, 0.7, 0, 0, 50),
    (7, 48, 0.3, 0, 0, 5),
    (11, 64, None, 2, 4, 30),
    (6, 40, None, 4, 8, 20),
    (5, 36, None, 1, 4, 20),
])
def test_matches_per_row_reference(rows, cols, sparsity, n, m, T):
    W, keep, stats, H, X = problem(rows, cols, sparsity, n, m, seed=rows)
    got = ops.dsnot(W, keep, stats.mean, stats.var, stats.sq_norm, mode="exact", hessian=H, max_cycles=T, n=n, m=m)
    want = torch.stack([row_reference(W[i], keep[i], W[i], H, T, m) for i in range(rows)])
    assert torch.equal(got, want)
    assert torch.equal(got.sum(1), keep.sum(1))
    if m:
        assert ((~got).view(rows, -1, m).sum(-1) == n).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_error_never_increases_and_is_returned(dtype):
    W, keep, stats, H, X = problem(24, 120, 0.6, seed=3, dtype=dtype)
    got, err = ops.dsnot(W, keep, stats.mean, stats.var, stats.sq_norm, mode="exact", hessian=H, return_error=True)
    before, after = reconstruction(W, W, keep, X), reconstruction(W, W, got, X)
    assert (after <= before * (1 + 1e-5)).all() and (after < before).any()
    torch.testing.assert_close(err, after, rtol=1e-6, atol=1e-6)


def test_reference_weight_counts_updated_values():
    """With updated kept values (SparseGPT), the error is measured against the dense reference."""
    W0, keep, stats, H, X = problem(10, 80, 0.5, seed=7)
    W = W0 + 0.3 * torch.randn_like(W0)
    got = ops.dsnot(W, keep, stats.mean, stats.var, stats.sq_norm, mode="exact", hessian=H, reference=W0)
    want = torch.stack([row_reference(W[i], keep[i], W0[i], H, 50, 0) for i in range(10)])
    assert torch.equal(got, want)
    assert (reconstruction(W0, W, got, X) <= reconstruction(W0, W, keep, X) * (1 + 1e-6)).all()


def test_zero_cycles_change_nothing():
    W, keep, stats, H, _ = problem(4, 32, 0.5)
    assert torch.equal(ops.dsnot(W, keep, stats.mean, stats.var, stats.sq_norm, mode="exact", hessian=H, max_cycles=0), keep)


@pytest.mark.parametrize("over,error,match", [
    (dict(hessian=None), ValueError, "needs hessian="),
    (dict(hessian=torch.eye(31)), ValueError, r"expected \(32, 32\)"),
    (dict(hessian=torch.eye(32, dtype=torch.int64)), TypeError, "hessian must be a floating"),
    (dict(hessian=torch.full((32, 32), float("nan"))), ValueError, "hessian contains NaN"),
    (dict(reference=torch.randn(4, 31)), ValueError, "reference has shape"),
    (dict(backend="cuda"), NotImplementedError, "has no cuda backend"),
])
def test_bad_inputs(over, error, match):
    W, keep, stats, H, _ = problem(4, 32, 0.5)
    kwargs = {"hessian": H, **over}
    with pytest.raises(error, match=match):
        ops.dsnot(W, keep, stats.mean, stats.var, stats.sq_norm, mode="exact", **kwargs)
