"""Triton activation statistics (sum x, sum x^2, sum of per-sequence variances) against the torch
backend and a float64 reference, including large-mean activations where E[x^2] - E[x]^2 would fail.
Runs natively on a GPU, under the Triton interpreter otherwise."""
import pytest
import torch

from sparsekit import ops
from sparsekit.torch_backend.activation_stats import activation_sums as torch_sums
from sparsekit.triton_kernels.activation_stats import activation_sums as triton_sums
from tests.helpers import DTYPES, KERNEL_DEVICE, needs_triton

pytestmark = needs_triton

# (B, S, C): odd sizes, S and C not multiples of the 32-token / 128-feature tiles
SHAPES = [(1, 1, 1), (2, 7, 5), (3, 65, 130), (2, 100, 33)]


def reference_sums(x):
    x = x.double().cpu()
    var = x.var(dim=1, unbiased=False).sum(0)
    return x.sum((0, 1)), x.square().sum((0, 1)), var


def assert_sums_close(got, x):
    """Each sum within 1e-5 of its float64 value, relative to the sum of magnitudes it accumulates."""
    want = reference_sums(x)
    xd = x.double().cpu()
    scales = (xd.abs().sum((0, 1)), xd.square().sum((0, 1)), want[2])
    for name, g, w, scale in zip(("sum_x", "sum_sq", "sum_var"), got, want, scales):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        err = ((g.double().cpu() - w).abs() / (scale + 1e-12)).max().item()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_backend_and_float64(shape, dtype):
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).to(KERNEL_DEVICE)
    got = triton_sums(x)
    assert_sums_close(got, x)
    for g, w in zip(got, torch_sums(x)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * x.shape[0] * x.shape[1])


@pytest.mark.parametrize("shape", [(0, 5, 7), (2, 3, 0)])
def test_empty_inputs_give_the_torch_backends_zeros(shape):
    x = torch.randn(shape).to(KERNEL_DEVICE)
    for g, w in zip(triton_sums(x), torch_sums(x)):
        assert g.dtype == w.dtype == torch.float32 and torch.equal(g, w)


@pytest.mark.parametrize("token_splits", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_mean_activations_stay_accurate(token_splits, dtype):
    # mean 100, variance 1: a one-pass E[x^2] - E[x]^2 in fp32 is off by ~1e-3 relative here
    x = (100 + torch.randn(3, 97, 40)).to(dtype).to(KERNEL_DEVICE)
    assert_sums_close(triton_sums(x, token_splits=token_splits), x)


def test_non_contiguous_inputs():
    base = torch.randn(4, 70, 3, 50).to(KERNEL_DEVICE) + 3
    for x in (
        base[:, :, 1],  # batch and token strides not those of a (4, 70, 50) tensor
        base[:, ::2, 2, 1:40],  # token stride 2, features offset
        base[:, :, 0].transpose(1, 2).contiguous().transpose(1, 2),  # feature stride != 1
    ):
        got = triton_sums(x, token_splits=2)
        assert_sums_close(got, x)


def test_through_activation_stats():
    x = (torch.randn(5, 33, 24) * 3 + 1).bfloat16().to(KERNEL_DEVICE)
    via_triton = ops.ActivationStats(24, backend="triton").update(x[:2]).update(x[2:])
    via_torch = ops.ActivationStats(24, backend="torch").update(x)
    for name in ("sq_norm", "mean", "var"):
        torch.testing.assert_close(getattr(via_triton, name), getattr(via_torch, name), rtol=1e-5, atol=1e-5)
    assert via_triton.nsamples == 5
