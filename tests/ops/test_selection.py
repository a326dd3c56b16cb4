"""Scores and mask selection against plain stable-sort references."""
import pytest
import torch

from sparsekit import ops


def reference_row_mask(score, sparsity):
    k = int(score.shape[1] * sparsity)
    order = torch.sort(score, dim=1, stable=True).indices
    keep = torch.ones_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        keep[r, order[r, :k]] = False
    return keep


def reference_nm_mask(score, n, m):
    keep = torch.ones_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        for g in range(0, score.shape[1], m):
            order = torch.sort(score[r, g:g + m], stable=True).indices
            keep[r, g + order[:n]] = False
    return keep


def reference_matrix_mask(score, sparsity):
    k = int(score.numel() * sparsity)
    order = torch.sort(score.flatten(), stable=True).indices
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.reshape(score.shape)


SHAPES = [(1, 8), (7, 13), (33, 64), (16, 129)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.95])
def test_row_selection(shape, sparsity):
    score = torch.rand(shape)
    keep = ops.select_mask(score, sparsity)
    assert keep.dtype == torch.bool
    assert torch.equal(keep, reference_row_mask(score, sparsity))
    assert (~keep).sum(1).eq(int(shape[1] * sparsity)).all()


def test_row_selection_ties_prune_lower_index_first():
    score = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 1.0]])
    keep = ops.select_mask(score, 0.5)
    assert keep.tolist() == [[False, False, True, True, False, True]]
    many_ties = torch.randint(0, 3, (20, 40)).float()
    assert torch.equal(ops.select_mask(many_ties, 0.45), reference_row_mask(many_ties, 0.45))


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_selection(n, m):
    score = torch.randint(0, 5, (9, 4 * m)).float()  # many ties
    keep = ops.select_mask(score, n=n, m=m)
    assert torch.equal(keep, reference_nm_mask(score, n, m))
    assert (~keep).reshape(9, -1, m).sum(-1).eq(n).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_matrix_scope(sparsity):
    score = torch.randint(0, 7, (11, 23)).float()
    keep = ops.select_mask(score, sparsity, scope="matrix")
    assert torch.equal(keep, reference_matrix_mask(score, sparsity))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scores(dtype):
    w = torch.randn(5, 9).to(dtype)
    sq = torch.rand(9)
    torch.testing.assert_close(ops.magnitude_score(w), w.float().abs())
    torch.testing.assert_close(ops.wanda_score(w, sq), w.float().abs() * sq.sqrt())
    assert torch.equal(ops.wanda_mask(w, sq, 0.5), reference_row_mask(w.float().abs() * sq.sqrt(), 0.5))
    assert torch.equal(ops.wanda_mask(w[:, :8], sq[:8], n=2, m=4),
                       reference_nm_mask(w[:, :8].float().abs() * sq[:8].sqrt(), 2, 4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), r"\[0, 1\)"),
    (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(n=2, m=3), "divisible"),
    (dict(n=4, m=4), "n < m"),
    (dict(n=2, m=4, sparsity=0.7), "contradicts"),
    (dict(), "either sparsity"),
    (dict(sparsity=0.5, scope="block"), "scope"),
])
def test_select_mask_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.select_mask(torch.rand(4, 8), **kwargs)


def test_shape_dtype_device_errors():
    with pytest.raises(ValueError, match="2-D"):
        ops.select_mask(torch.rand(8), 0.5)
    with pytest.raises(TypeError, match="floating"):
        ops.wanda_score(torch.ones(2, 3, dtype=torch.int32), torch.ones(3))
    with pytest.raises(ValueError, match="3 entries"):
        ops.wanda_score(torch.rand(2, 3), torch.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        ops.wanda_mask(torch.tensor([[float("nan"), 1.0]]), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="one device"):
        ops.wanda_score(torch.rand(2, 3), torch.ones(3, device="meta"))


def test_explicit_unavailable_backend_is_an_error():
    with pytest.raises((RuntimeError, NotImplementedError)):
        ops.select_mask(torch.rand(4, 8), 0.5, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.select_mask(torch.rand(4, 8), 0.5, backend="opencl")


def test_per_row_sparsity():
    score = torch.rand(6, 20)
    per_row = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.66, 0.95])
    keep = ops.select_mask(score, per_row)
    for r in range(6):
        assert torch.equal(keep[r:r + 1], reference_row_mask(score[r:r + 1], per_row[r].item()))
    with pytest.raises(ValueError, match="one entry per output row"):
        ops.select_mask(score, torch.rand(5))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ops.select_mask(score, torch.full((6,), 1.0))
    with pytest.raises(ValueError, match="per row"):
        ops.select_mask(score, per_row, scope="matrix")


@pytest.mark.parametrize("bad", [torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, float("inf"), 2.0])])
def test_bad_sq_norm(bad):
    with pytest.raises(ValueError, match=">= 0"):
        ops.wanda_mask(torch.rand(2, 3), bad, 0.5)
