"""SparseGPT against a line-by-line port of IST-DASLab/sparsegpt `fasterprune` (exact-count variant)."""
import pytest
import torch

from sparsekit import ops


def reference_sparsegpt(W, H, sparsity, prunen, prunem, blocksize, percdamp):
    W = W.clone().float()
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    H[range(columns), range(columns)] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            k = int(tmp.numel() * sparsity)
            order = torch.sort(tmp.flatten(), stable=True).indices
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[order[:k]] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                idx = torch.sort(tmp, dim=1, stable=True).indices[:, :prunen]
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, keep


def make_problem(rows, cols, tokens=256):
    W = torch.randn(rows, cols)
    X = torch.randn(tokens, cols) * torch.rand(cols) * 2
    H = 2 / 4 * X.t() @ X
    return W, H, X


@pytest.mark.parametrize("rows, cols, blocksize", [(8, 16, 8), (13, 40, 16), (32, 96, 128)])
@pytest.mark.parametrize("pattern", [(0.5, 0, 0), (0.7, 0, 0), (None, 2, 4), (None, 4, 8)])
def test_sparsegpt_matches_reference(rows, cols, blocksize, pattern):
    sparsity, n, m = pattern
    W, H, _ = make_problem(rows, cols)
    ref_w, ref_keep = reference_sparsegpt(W, H, sparsity, n, m, blocksize, 0.01)
    w, keep = ops.sparsegpt(W, H, sparsity, n, m, blocksize=blocksize)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(w, ref_w, rtol=1e-4, atol=1e-4)
    assert torch.all(w[~keep] == 0)
    if m:
        assert (~keep).reshape(rows, -1, m).sum(-1).eq(n).all()


def test_sparsegpt_beats_wanda_on_correlated_inputs():
    W = torch.randn(64, 128)
    X = torch.randn(1024, 32) @ torch.randn(32, 128) + 0.1 * torch.randn(1024, 128)
    H = 2 / 4 * X.t() @ X
    w, keep = ops.sparsegpt(W, H, 0.5)
    err_obs = (X @ (W - w).t()).pow(2).mean()
    wanda_keep = ops.wanda_mask(W, X.pow(2).sum(0), 0.5)
    err_wanda = (X @ (W - W * wanda_keep).t()).pow(2).mean()
    assert err_obs < 0.5 * err_wanda


def test_keep_pruned_values():
    W, H, _ = make_problem(16, 32)
    w, keep = ops.sparsegpt(W, H, 0.5)
    w2, keep2 = ops.sparsegpt(W, H, 0.5, keep_pruned_values=True)
    assert torch.equal(keep, keep2)
    torch.testing.assert_close(w2 * keep2, w)
    assert (w2[~keep2] != 0).all()


def test_sparsegpt_preserves_dtype_and_checks_shapes():
    W, H, _ = make_problem(8, 16)
    w, _ = ops.sparsegpt(W.bfloat16(), H, 0.5)
    assert w.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        ops.sparsegpt(W, H[:8, :8], 0.5)
    with pytest.raises(ValueError, match="multiple of m"):
        ops.sparsegpt(W, H, n=2, m=4, blocksize=6)


@pytest.mark.parametrize("rows,cols,dead", [(7, 13, 0), (33, 64, 3), (1, 5, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsegpt_saliency_is_w2_over_the_damped_inverse_hessians_diagonal(rows, cols, dead, dtype):
    torch.manual_seed(rows * cols + dead)
    W = torch.randn(rows, cols).to(dtype)
    X = torch.randn(4 * cols, cols)
    X[:, :dead] = 0  # never-active inputs: diag H = 0, SparseGPT sets it to 1 before damping
    H = X.T @ X / X.shape[0]
    percdamp = 0.05
    h = H.double().clone()
    h[range(dead), range(dead)] = 1.0
    h.diagonal().add_(percdamp * h.diagonal().mean())
    expected = W.double().square() / torch.linalg.inv(h).diagonal()
    saliency = ops.sparsegpt_saliency(W, H, percdamp)
    assert saliency.dtype == torch.float32 and saliency.shape == (rows, cols)
    torch.testing.assert_close(saliency.double(), expected, rtol=1e-4, atol=1e-6)


def test_sparsegpt_saliency_checks_its_inputs():
    W, H = torch.randn(4, 6), torch.eye(6)
    with pytest.raises(ValueError, match="hessian"):
        ops.sparsegpt_saliency(W, torch.eye(5))
    with pytest.raises(ValueError, match="percdamp"):
        ops.sparsegpt_saliency(W, H, 0.0)
