"""Hypothesis fuzz of the ops' argument validation: any argument either works as documented or is
refused with ValueError/TypeError naming the problem, never another exception or a wrong result."""
import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sparsekit import ops

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(st.integers(0, 9), st.integers(0, 40))
dims = st.sampled_from([2, 2, 2, 0, 1, 3])
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool])
sparsities = st.one_of(
    st.floats(0, 0.99),  # valid values, so the success path is exercised as well
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 3),
    st.none(),
    st.sampled_from(["0.5", [0.5], True]),
)
nm = st.tuples(st.integers(-2, 9), st.integers(-2, 9))


def make_tensor(shape, ndim, dtype, special):
    shape = shape[:ndim] if ndim <= 2 else (*shape, 2)
    t = torch.randn(shape) if shape else torch.randn(())
    if special and t.numel():
        t.view(-1)[0] = special
    return t.to(dtype)


def check_mask(keep, weight, sparsity, n, m):
    assert keep.dtype == torch.bool and keep.shape == weight.shape
    rows, cols = weight.shape
    if m:
        assert torch.equal((~keep).reshape(rows, cols // m, m).sum(-1), torch.full((rows, cols // m), n))
    else:
        assert torch.equal((~keep).sum(1), torch.full((rows,), int(cols * float(sparsity))))


@SETTINGS
@given(shape=shapes, ndim=dims, dtype=dtypes, special=st.sampled_from([None, math.nan, math.inf]),
       sparsity=sparsities, pattern=nm, norm_len_delta=st.integers(-1, 1))
def test_wanda_mask_validates_or_works(shape, ndim, dtype, special, sparsity, pattern, norm_len_delta):
    weight = make_tensor(shape, ndim, dtype, special)
    cols = weight.shape[-1] if weight.dim() else 0
    sq_norm = torch.rand(max(cols + norm_len_delta, 0)) if dtype != torch.bool else torch.rand(cols)
    n, m = pattern
    try:
        keep = ops.wanda_mask(weight, sq_norm, sparsity, n, m)
    except (ValueError, TypeError) as exc:
        assert str(exc)  # a message, not an empty exception
        event("refused")
        return
    event("computed and checked")
    check_mask(keep, weight, sparsity, n, m)


@SETTINGS
@given(shape=shapes, ndim=dims, dtype=dtypes, special=st.sampled_from([None, math.nan]),
       sparsity=sparsities, pattern=nm, scope=st.sampled_from(["row", "matrix", "column", ""]))
def test_select_mask_validates_or_works(shape, ndim, dtype, special, sparsity, pattern, scope):
    score = make_tensor(shape, ndim, dtype, special)
    n, m = pattern
    try:
        keep = ops.select_mask(score, sparsity, n, m, scope=scope)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        event("refused")
        return
    event("computed and checked")
    if scope == "row":
        check_mask(keep, score, sparsity, n, m)
    else:
        assert (~keep).sum() == int(score.numel() * float(sparsity))


@SETTINGS
@given(rows=st.integers(0, 70), cols=st.integers(0, 130), dtype=dtypes, zero_every=st.sampled_from([0, 2, 4]))
def test_compress_24_validates_or_round_trips(rows, cols, dtype, zero_every):
    weight = torch.randn(rows, cols)
    if zero_every and cols % 4 == 0 and rows * cols:
        weight.reshape(rows, -1, 4)[..., :zero_every // 2 + 1] = 0  # a 2:4 (or sparser) weight
    weight = weight.to(dtype)
    try:
        values, meta = ops.compress_24(weight)
    except (ValueError, TypeError, NotImplementedError) as exc:
        assert str(exc)
        event("refused")
        return
    event("computed and checked")
    assert torch.equal(ops.decompress_24(values, meta), weight)
