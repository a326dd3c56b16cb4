"""ActivationStats / HessianStats against plain per-sequence formulas."""
import pytest
import torch

from sparsekit import ops


def reference_stats(x):
    """x: (B, S, C) -> sq_norm, mean, var as defined by Wanda/DSnoT, in float64."""
    x = x.double()
    n = x.shape[0]
    sq_norm = sum((x[b] ** 2).sum(0) for b in range(n)) / n
    mean = sum(x[b].sum(0) for b in range(n)) / n
    var = sum(x[b].var(0, unbiased=False) for b in range(n)) / n
    return sq_norm, mean, var


@pytest.mark.parametrize("shape", [(1, 7, 5), (4, 33, 17), (3, 128, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_stats_matches_reference(shape, dtype):
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    stats = ops.ActivationStats(shape[-1], backend="torch").update(x)
    sq_norm, mean, var = reference_stats(x.float())
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.sq_norm.double(), sq_norm, **tol)
    torch.testing.assert_close(stats.mean.double(), mean, **tol)
    torch.testing.assert_close(stats.var.double(), var, **tol)
    assert stats.nsamples == shape[0]
    assert stats.sq_norm.dtype == torch.float32


def test_chunked_updates_equal_one_update():
    x = torch.randn(10, 40, 24)
    whole = ops.ActivationStats(24).update(x)
    chunked = ops.ActivationStats(24)
    for chunk in (x[:3], x[3:4], x[4:10]):
        chunked.update(chunk)
    for name in ("sq_norm", "mean", "var"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-6)
    assert chunked.nsamples == whole.nsamples == 10


def test_two_dim_input_is_one_sequence():
    x = torch.randn(9, 6)
    a = ops.ActivationStats(6).update(x)
    b = ops.ActivationStats(6).update(x.unsqueeze(0))
    assert a.nsamples == 1
    torch.testing.assert_close(a.var, b.var)


def test_hessian_matches_official_formula():
    x = torch.randn(3, 20, 8)
    h = ops.HessianStats(8)
    h.update(x[:1]).update(x[1:])
    flat = x.reshape(-1, 8).double()
    torch.testing.assert_close(h.hessian.double(), 2 / 3 * flat.t() @ flat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 3, 5), "shape"),
    (torch.randint(0, 3, (2, 3, 4)), "floating"),
    (torch.randn(2, 0, 4), "no tokens"),
])
def test_stats_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.ActivationStats(4).update(bad)


def test_stats_before_update_is_an_error():
    with pytest.raises(RuntimeError, match="update"):
        ops.ActivationStats(4).sq_norm
