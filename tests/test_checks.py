"""sparsekit.checks, the one home of input checks: each bad input raises the error that names it and the fix."""
import math

import pytest
import torch

from sparsekit import checks


@pytest.mark.parametrize("value, minimum, ok", [(0, 0, True), (5, 1, True), (0, 1, False), (True, 0, False),
                                                (2.0, 0, False), ("3", 0, False)])
def test_check_int(value, minimum, ok):
    if ok:
        assert checks.check_int(value, "n", minimum) == value
    else:
        with pytest.raises(ValueError, match=f"n must be an integer >= {minimum}"):
            checks.check_int(value, "n", minimum)


def test_check_nonneg_number():
    assert checks.check_nonneg_number(0, "t") == 0.0 and checks.check_nonneg_number(torch.tensor(0.5), "t") == 0.5
    for bad, error in ((True, TypeError), ("x", TypeError), (None, TypeError), (-0.1, ValueError), (math.inf, ValueError),
                       (math.nan, ValueError)):
        with pytest.raises(error, match="t must be a"):
            checks.check_nonneg_number(bad, "t")


def test_check_weight_and_sq_norm():
    checks.check_weight(torch.randn(3, 5))
    with pytest.raises(ValueError, match="must be 2-D"):
        checks.check_weight(torch.randn(5))
    with pytest.raises(ValueError, match="w contains NaN/Inf"):
        checks.check_weight(torch.tensor([[1.0, math.inf]]), "w")
    with pytest.raises(TypeError, match="floating tensor"):
        checks.check_weight(torch.ones(2, 2, dtype=torch.int32))
    checks.check_sq_norm(torch.rand(5), 5)
    with pytest.raises(ValueError, match="5 entries"):
        checks.check_sq_norm(torch.rand(4), 5)
    with pytest.raises(ValueError, match="finite and >= 0"):
        checks.check_sq_norm(torch.tensor([1.0, -1.0]), 2)
