"""Contract of ops.besa_masked_linear and BESA's parametrisation helpers (ops.candidate_sparsities, ...):
the torch backend against the formulas of sparsekit/ops/besa_masked_linear.py written out naively
(dense masks, explicit loops over the candidates), on random inputs of odd shapes; plus the input checks.
The Triton kernel against the torch backend and the official formulation: tests/kernels/test_besa_masked_linear.py."""
import pytest
import torch

from sparsekit import ops
from sparsekit.torch_backend.besa_masked_linear import besa_masked_linear_backward, besa_masked_linear_forward

SHAPES = [(1, 3, 1), (5, 7, 4), (13, 31, 9)]  # (rows, cols, tokens)


def naive_masked_linear(x, weight, ranks, logits, bias=None, sigmoid=True, prior=None):
    """y = x @ (W * M)^T + b, M = H + P - sg(P): H the hard mask of floor(s * cols) pruned lowest ranks,
    P[i, j] = sum_k p_k [rank_ij >= tau_k] the keep probability, built candidate by candidate."""
    rows, cols = weight.shape
    K = logits.shape[1]
    z = logits.sigmoid() if sigmoid else logits
    p = (z + (0 if prior is None else prior)).softmax(dim=-1).expand(rows, K)
    c = torch.tensor([1 - k / (K - 1) for k in range(K)], dtype=torch.float64)
    s = p.detach().double() @ c
    H = torch.stack([ranks[i] >= int(s[i].item() * cols) for i in range(rows)]).float()
    P = torch.zeros(rows, cols)
    for k in range(K):
        tau = (K - 1 - k) * cols // (K - 1)
        P = P + p[:, k:k + 1] * (ranks >= tau).float()
    M = H + P - P.detach()
    y = x @ (weight * M).t()
    return y if bias is None else y + bias


@pytest.mark.parametrize("rows, cols, tokens", SHAPES)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("sigmoid, target", [(True, None), (False, None), (True, 0.3)])
def test_op_matches_naive_formula_with_gradients(rows, cols, tokens, per_row, sigmoid, target):
    x = torch.randn(2, tokens, cols, requires_grad=True)
    weight, bias = torch.randn(rows, cols), torch.randn(rows)
    ranks = ops.row_ranks(torch.rand(rows, cols))
    logits = (torch.randn(rows if per_row else 1, 11) * 2).requires_grad_(True)
    prior = None if target is None else ops.target_log_prior(target, 11)
    y = ops.besa_masked_linear(x, weight, ranks, logits, bias, sigmoid=sigmoid, log_prior=prior, backend="torch")
    grad = torch.randn(y.shape)
    gx, gl = torch.autograd.grad((y * grad).sum(), (x, logits))

    x2, l2 = x.detach().clone().requires_grad_(True), logits.detach().clone().requires_grad_(True)
    want = naive_masked_linear(x2, weight, ranks, l2, bias, sigmoid, prior)
    want_gx, want_gl = torch.autograd.grad((want * grad).sum(), (x2, l2))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, want_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gl, want_gl, rtol=1e-4, atol=1e-5 * max(want_gl.abs().max().item(), 1.0))


@pytest.mark.parametrize("rows, cols, tokens", SHAPES)
def test_torch_backend_bins_are_gradients_summed_per_candidate_bucket(rows, cols, tokens):
    x, weight, grad_y = torch.randn(tokens, cols), torch.randn(rows, cols), torch.randn(tokens, rows)
    ranks = ops.row_ranks(torch.rand(rows, cols))
    counts = torch.randint(0, cols + 1, (rows,), dtype=torch.int32)
    K = 7
    buckets = ops.rank_buckets(cols, K)
    keep = (ranks >= counts.unsqueeze(1)).float()
    torch.testing.assert_close(besa_masked_linear_forward(x, weight, ranks, counts), x @ (weight * keep).t())
    grad_x, bins = besa_masked_linear_backward(grad_y, x, weight, ranks, counts, buckets, K)
    torch.testing.assert_close(grad_x, grad_y @ (weight * keep))
    g = (grad_y.t() @ x) * weight
    want = torch.zeros(rows, K)
    for i in range(rows):
        for j in range(cols):
            want[i, buckets[ranks[i, j]]] += g[i, j]
    torch.testing.assert_close(bins, want, rtol=1e-5, atol=1e-5)
    assert besa_masked_linear_backward(grad_y, x, weight, ranks, counts, buckets, K, need_grad_x=False)[0] is None


def test_hard_mask_prunes_the_expected_counts():
    weight, x = torch.randn(9, 20), torch.randn(6, 20)
    ranks = ops.row_ranks(torch.rand(9, 20))
    logits = torch.randn(9, 101)
    counts = ops.prune_counts(logits, 9, 20)
    s = ops.expected_sparsity(logits).double()
    assert counts.tolist() == [int(v * 20) for v in s.tolist()]
    keep = ranks >= counts.unsqueeze(1)
    assert torch.equal((~keep).sum(1).to(torch.int32), counts)
    torch.testing.assert_close(ops.besa_masked_linear(x, weight, ranks, logits, backend="torch"), x @ (weight * keep).t())


def test_candidates_and_buckets():
    c = ops.candidate_sparsities(101)
    assert c[0] == 1 and c[-1] == 0 and torch.allclose(c[:3], torch.tensor([1.0, 0.99, 0.98]))
    for cols in (1, 7, 100, 576, 1536):
        tau = ops.candidate_prune_counts(cols, 101)
        assert tau.tolist() == [((100 - k) * cols) // 100 for k in range(101)]
        buckets = ops.rank_buckets(cols, 101)
        for t in range(cols):
            assert buckets[t] == min(k for k in range(101) if tau[k] <= t)


@pytest.mark.parametrize("target", [0.4, 0.5, 0.6])
def test_target_prior_starts_zero_logits_at_the_target_within_the_reachable_range(target):
    prior = ops.target_log_prior(target)
    assert abs(ops.expected_sparsity(torch.zeros(1, 101), log_prior=prior).item() - target) < 1e-4
    low, high = ops.reachable_sparsity(log_prior=prior)
    assert low < target < high
    p = ops.sparsity_probabilities(torch.zeros(1, 101), log_prior=prior)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))


def test_row_ranks_break_ties_by_column():
    score = torch.tensor([[1.0, 0.5, 1.0, 0.2], [2.0, 2.0, 2.0, 2.0]])
    assert ops.row_ranks(score).tolist() == [[2, 1, 3, 0], [0, 1, 2, 3]]


def test_bad_inputs_raise_clear_errors():
    x, weight, logits = torch.randn(2, 3, 8), torch.randn(4, 8), torch.randn(4, 101)
    ranks = ops.row_ranks(torch.rand(4, 8))
    with pytest.raises(ValueError, match="int32"):
        ops.besa_masked_linear(x, weight, ranks.long(), logits)
    with pytest.raises(ValueError, match="logits must be float32"):
        ops.besa_masked_linear(x, weight, ranks, logits[:3])
    with pytest.raises(ValueError, match="logits must be float32"):
        ops.besa_masked_linear(x, weight, ranks, logits.double())
    with pytest.raises(TypeError, match="share a dtype"):
        ops.besa_masked_linear(x.bfloat16(), weight, ranks, logits)
    with pytest.raises(ValueError, match="last dim"):
        ops.besa_masked_linear(x[..., :5], weight, ranks, logits)
    with pytest.raises(ValueError, match="bias"):
        ops.besa_masked_linear(x, weight, ranks, logits, torch.zeros(5))
    with pytest.raises(ValueError, match="log_prior"):
        ops.besa_masked_linear(x, weight, ranks, logits, log_prior=torch.zeros(7))
    with pytest.raises(ValueError, match="num_candidates"):
        ops.candidate_sparsities(1)
