"""sparsekit.allocation.budget: integer prune counts that meet a budget exactly."""
import pytest
import torch

from sparsekit.allocation.budget import apportion, budget_count, exact_fraction, project_row_counts
from sparsekit import ops


def test_budget_projection_is_exact_and_keeps_the_learned_order():
    rows = [torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.4, 0.41])]
    counts = project_row_counts(rows, [10, 7], budget=17)
    assert sum(int(c.sum()) for c in counts) == 17
    assert counts[0][0] <= counts[0][1] <= counts[0][2] and (counts[0] <= 9).all()
    with pytest.raises(ValueError, match="lower the sparsity"):
        project_row_counts(rows, [10, 7], budget=40)
    assert budget_count([100, 50], [0.5, 0.31]) == 66
    assert apportion(torch.tensor([1.5, 2.5]), torch.tensor([3, 5]), 17, torch.tensor([9, 9])).tolist() == [2, 2]


@pytest.mark.parametrize("cols", [1, 7, 4096, 11008])
def test_exact_fraction_gives_back_the_count(cols):
    generator = torch.Generator().manual_seed(cols)
    counts = torch.randint(0, cols, (57,), generator=generator).double()
    score = torch.rand(57, cols, generator=generator)
    for per_row in (exact_fraction(counts, cols), exact_fraction(counts, cols).float()):
        keep = ops.select_mask(score, per_row)  # prunes int(cols * s) per row
        assert torch.equal((~keep).sum(dim=1), counts.long())
    for count in (0, cols - 1):
        assert int(cols * exact_fraction(count, cols)) == count
        assert int(3 * cols * exact_fraction(count, cols, rows=3)) == 3 * count
