"""Triton selection kernels (select_mask, wanda_mask) against the torch backend: masks must be identical.

Shapes have row counts that are not multiples of the kernels' row tiles and odd widths; scores include
negatives, -0.0/+0.0, +-inf and many ties (integer values), so the tie rule (lower column / flat index
pruned first) is exercised. Runs natively on a GPU, under the Triton interpreter otherwise.
"""
import os

import pytest
import torch

from sparsekit import backend as sk_backend
from sparsekit import ops
from tests.helpers import KERNEL_DEVICE, needs_triton

pytestmark = needs_triton

SHAPES = [(1, 1), (3, 7), (17, 33), (5, 257), (2, 1100)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand_score(shape, dtype=torch.float32, ties=False):
    score = torch.randint(-3, 4, shape).float() if ties else torch.randn(shape)
    return score.to(dtype).to(KERNEL_DEVICE)


def both_backends(op, *args, **kwargs):
    got = op(*args, **kwargs, backend="triton")
    want = op(*args, **kwargs, backend="torch")
    assert got.dtype == torch.bool and got.shape == want.shape
    assert torch.equal(got, want), f"{(got != want).sum().item()} entries differ"
    return got


def assert_row_counts(keep, counts):
    assert torch.equal((~keep).sum(1).cpu(), torch.as_tensor(counts).long().cpu())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_row_scope(shape, sparsity):
    dtype = DTYPES[(SHAPES.index(shape) + int(sparsity * 10)) % 3]
    keep = both_backends(ops.select_mask, rand_score(shape, dtype), sparsity)
    assert_row_counts(keep, [int(shape[1] * sparsity)] * shape[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_per_row_sparsity_with_many_ties(shape):
    rows, cols = shape
    sparsity = torch.rand(rows) * 0.95
    sparsity[0] = 0.0
    score = rand_score(shape, ties=True)
    keep = both_backends(ops.select_mask, score, sparsity.to(KERNEL_DEVICE))
    assert_row_counts(keep, (sparsity.double() * cols).floor())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_row_scope_dtypes(dtype):
    both_backends(ops.select_mask, rand_score((9, 40), dtype), 0.3)
    both_backends(ops.select_mask, rand_score((9, 40), dtype, ties=True), 0.6)


def test_signed_zeros_and_infinities_order_like_torch():
    row = [0.0, -0.0, 1.0, float("-inf"), -0.0, 0.0, float("inf"), -1.0, 0.0, -0.0, 2.0, float("-inf")]
    score = torch.tensor([row, row[::-1]], device=KERNEL_DEVICE)
    for sparsity in (0.25, 0.5, 0.75):
        both_backends(ops.select_mask, score, sparsity)
    both_backends(ops.select_mask, score, 0.5, scope="matrix")
    both_backends(ops.select_mask, score, n=2, m=4)


def test_non_contiguous_score():
    base = rand_score((40, 30), ties=True)
    both_backends(ops.select_mask, base.t(), 0.45)  # column-major
    both_backends(ops.select_mask, base[::3, 1::2], 0.6)  # strided rows and columns
    both_backends(ops.select_mask, base.t()[:, :24], n=2, m=4)


@pytest.mark.parametrize("shape", SHAPES)
def test_matrix_scope(shape):
    sparsity = [0.0, 0.37, 0.5, 0.8, 0.95][SHAPES.index(shape)]
    score = rand_score(shape, ties=SHAPES.index(shape) % 2 == 0)
    keep = both_backends(ops.select_mask, score, sparsity, scope="matrix")
    assert (~keep).sum().item() == int(score.numel() * sparsity)


def test_matrix_scope_spans_several_programs(monkeypatch):
    # small tiles so that several programs build each histogram and tie ranks carry across programs
    from sparsekit.triton_kernels import selection as kernels

    monkeypatch.setattr(kernels, "FLAT_BLOCK", 128)
    monkeypatch.setattr(kernels, "FLAT_BLOCKS_PER_PROGRAM", 2)
    both_backends(ops.select_mask, rand_score((13, 29), torch.bfloat16), 0.7, scope="matrix")
    both_backends(ops.select_mask, rand_score((11, 31), ties=True), 0.45, scope="matrix")
    both_backends(ops.select_mask, rand_score((3, 9), torch.float64, ties=True), 0.5, scope="matrix")


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 6)])
def test_nm(n, m):
    score = rand_score((7, 5 * m), ties=True)
    keep = both_backends(ops.select_mask, score, n=n, m=m)
    assert (~keep).reshape(7, -1, m).sum(-1).eq(n).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_wanda_row_scope(shape):
    i = SHAPES.index(shape)
    dtype = DTYPES[i % 3]
    weight = torch.randn(shape[::-1]).to(dtype).to(KERNEL_DEVICE).t()  # non-contiguous (out, in)
    sq_norm = (torch.rand(shape[1]) * 4).to(KERNEL_DEVICE)
    sparsity = [0.1, 0.5, 0.5, 0.9, 0.7][i]
    keep = both_backends(ops.wanda_mask, weight, sq_norm, sparsity)
    assert_row_counts(keep, [int(shape[1] * sparsity)] * shape[0])


def test_wanda_ties_and_per_row_sparsity():
    weight = torch.randint(-2, 3, (13, 50)).float().to(KERNEL_DEVICE)  # zeros and equal |W|
    sq_norm = torch.randint(0, 3, (50,)).float().to(KERNEL_DEVICE)  # zero and equal norms
    sparsity = torch.linspace(0.0, 0.95, 13).to(KERNEL_DEVICE)
    keep = both_backends(ops.wanda_mask, weight, sq_norm, sparsity)
    assert_row_counts(keep, (sparsity.double().cpu() * 50).floor())
    both_backends(ops.wanda_mask, weight.half(), sq_norm, 0.5)


@pytest.mark.parametrize("n, m, dtype", [(2, 4, torch.bfloat16), (4, 8, torch.float16), (1, 4, torch.float32)])
def test_wanda_nm(n, m, dtype):
    weight = torch.randn(11, 6 * m).to(dtype).to(KERNEL_DEVICE)
    sq_norm = torch.rand(6 * m).to(KERNEL_DEVICE)
    keep = both_backends(ops.wanda_mask, weight, sq_norm, n=n, m=m)
    assert (~keep).reshape(11, -1, m).sum(-1).eq(n).all()


@pytest.mark.skipif(bool(os.environ.get("SPARSEKIT_BACKEND")), reason="SPARSEKIT_BACKEND forces a backend")
def test_backend_choice():
    for op in ("select_mask", "wanda_mask", "activation_stats"):
        assert sk_backend.resolve(op, None, "cpu")[0] == "torch"
        if torch.cuda.is_available():
            assert sk_backend.resolve(op, None, "cuda")[0] == "triton"
    if KERNEL_DEVICE == "cpu":  # explicit Triton on CPU tensors: the interpreter (conftest sets TRITON_INTERPRET=1)
        keep = ops.wanda_mask(torch.randn(3, 8), torch.rand(8), 0.5, backend="triton")
        assert keep.device.type == "cpu" and (~keep).sum(1).eq(4).all()
