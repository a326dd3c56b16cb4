"""BESA's masked linear (torch backend and fused Triton kernel) against a port of the official
LLMPrune-BESA `SparseLinear` (sort indices + [K x cols] probability map + straight-through mask).
The op's own contract (parametrisation, input checks) is tested in tests/ops/test_besa_masked_linear.py."""
import pytest
import torch

from sparsekit import ops
from tests.helpers import DTYPES, KERNEL_DEVICE, needs_triton

BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
# (rows, cols, tokens): odd sizes and sizes that are not multiples of the kernel's 64/32 tiles
SHAPES = [(1, 16, 1), (7, 13, 5), (37, 45, 19), (33, 130, 70)]


def official_masked_linear(x, weight, score, logits, sigmoid=True, prior=None):
    """y = x @ (W * M)^T with M = H + P - sg(P) built like the official SparseLinear (fp32 autograd);
    `prior` (sparsekit's extension) is added to the softmax input."""
    rows, cols = weight.shape
    K = logits.shape[1]
    probs = ((logits.sigmoid() if sigmoid else logits) + (0 if prior is None else prior)).softmax(dim=-1)
    s = probs @ ops.candidate_sparsities(K)
    sort_indices = torch.sort(score, dim=-1, stable=True)[1]
    prob_map = torch.zeros(K, cols)
    for k in range(K):
        prob_map[k, :((K - 1 - k) * cols) // (K - 1)] = 1  # candidate k prunes the first floor(c_k * cols) ranks
    keep_prob = (1 - probs @ prob_map).expand(rows, cols)
    P = torch.zeros(rows, cols).scatter(1, sort_indices, keep_prob)
    counts = (s.detach().double() * cols).floor().long().expand(rows)
    H = torch.ones(rows, cols)
    for r in range(rows):
        H[r, sort_indices[r, :counts[r]]] = 0
    M = H + P - P.detach()
    return x.float() @ (weight.float() * M).t()


def run_op(x, weight, ranks, logits, backend, sigmoid=True, prior=None):
    x = x.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    y = ops.besa_masked_linear(x, weight, ranks, logits, sigmoid=sigmoid, log_prior=prior, backend=backend)
    torch.manual_seed(1)
    grad = torch.randn(y.shape).to(y.device)  # drawn on CPU: the same numbers as the reference's
    (y.float() * grad).sum().backward()
    return y.float(), x.grad.float(), logits.grad


def problem(rows, cols, tokens, per_row, device="cpu", dtype=torch.float32):
    weight = torch.randn(rows, cols, device=device).to(dtype)
    x = torch.randn(2, tokens, cols, device=device).to(dtype)
    score = torch.rand(rows, cols, device=device)
    logits = torch.randn(rows if per_row else 1, 101, device=device) * 2
    return x, weight, score, logits


def reference_grads(x, weight, score, logits, sigmoid=True, prior=None):
    x32 = x.detach().float().cpu().requires_grad_(True)
    l32 = logits.detach().float().cpu().requires_grad_(True)
    y = official_masked_linear(x32, weight.float().cpu(), score.cpu(), l32, sigmoid, None if prior is None else prior.cpu())
    torch.manual_seed(1)
    grad = torch.randn(y.shape)
    (y * grad).sum().backward()
    return y, x32.grad, l32.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows, cols, tokens", SHAPES)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("sigmoid, prior", [(True, None), (False, None), (True, 0.7)])
def test_matches_official_formulation_fp32(backend, rows, cols, tokens, per_row, sigmoid, prior):
    x, weight, score, logits = problem(rows, cols, tokens, per_row, KERNEL_DEVICE)
    prior = None if prior is None else ops.target_log_prior(prior).to(KERNEL_DEVICE)
    y, gx, gl = run_op(x, weight, ops.row_ranks(score), logits, backend, sigmoid, prior)
    ref_y, ref_gx, ref_gl = reference_grads(x, weight, score, logits, sigmoid, prior)
    torch.testing.assert_close(y.cpu(), ref_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx.cpu(), ref_gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gl.cpu(), ref_gl, rtol=1e-4, atol=1e-5 * ref_gl.abs().max().item())
    assert gl.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
@pytest.mark.parametrize("rows, cols, tokens", SHAPES[1:])
def test_half_precision_error_is_bounded_by_torch(backend, dtype, rows, cols, tokens):
    """Low-precision outputs: within twice the plain-torch error in that dtype plus one ulp."""
    x, weight, score, logits = problem(rows, cols, tokens, True, KERNEL_DEVICE, dtype)
    ranks = ops.row_ranks(score)
    y, gx, gl = run_op(x, weight, ranks, logits, backend)
    ref_y, ref_gx, ref_gl = reference_grads(x, weight, score, logits)
    keep = ranks >= ops.prune_counts(logits, rows, cols).unsqueeze(1)
    masked = (weight * keep).to(dtype)
    plain_y = (x @ masked.t()).float().cpu()
    torch.manual_seed(1)
    plain_gx = (torch.randn(y.shape).to(x.device, dtype) @ masked).float().cpu()
    eps = torch.finfo(dtype).eps  # one ulp at |v| is <= eps * |v|: the interpreter rounds bf16 stores toward zero
    for got, plain, ref in ((y, plain_y, ref_y), (gx, plain_gx, ref_gx)):
        assert ((got.cpu() - ref).abs() <= 2 * (plain - ref).abs().max() + eps * ref.abs()).all()
    # the logit gradient accumulates in fp32 from low-precision x and grad_y
    torch.testing.assert_close(gl.cpu(), ref_gl, rtol=0.05, atol=0.02 * ref_gl.abs().max().item())


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_torch_backend_on_strided_input(dtype):
    x, weight, score, logits = problem(21, 70, 40, True, KERNEL_DEVICE, dtype)
    x = x.transpose(0, 1)  # non-contiguous (tokens, batch, cols)
    ranks = ops.row_ranks(score)
    a = run_op(x, weight, ranks, logits, "torch")
    b = run_op(x, weight, ranks, logits, "triton")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for got, want in zip(b, a):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(want.abs().max().item(), 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_mask_in_forward_and_bias(backend):
    x, weight, score, logits = problem(9, 20, 6, True, KERNEL_DEVICE)
    ranks = ops.row_ranks(score)
    bias = torch.randn(9, device=KERNEL_DEVICE)
    y = ops.besa_masked_linear(x, weight, ranks, logits, bias, backend=backend)
    counts = ops.prune_counts(logits, 9, 20)
    keep = ranks >= counts.unsqueeze(1)
    assert torch.equal((~keep).sum(1).to(torch.int32), counts)
    torch.testing.assert_close(y, x @ (weight * keep).t() + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_input_gradient_when_x_is_constant(backend):
    x, weight, score, logits = problem(8, 24, 7, False, KERNEL_DEVICE)
    logits.requires_grad_(True)
    y = ops.besa_masked_linear(x, weight, ops.row_ranks(score), logits, backend=backend)
    y.square().sum().backward()
    assert logits.grad.shape == (1, 101) and torch.isfinite(logits.grad).all()

