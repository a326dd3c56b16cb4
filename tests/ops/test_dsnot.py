"""ops.dsnot: mode="official" against a literal per-row port of zyxxmu/DSnoT `prune_DSnoT`, the
error mode's guarantees, and every input check. (Triton vs torch: tests/kernels/test_dsnot.py.)"""
import pytest
import torch

from sparsekit import ops
from sparsekit.ops.dsnot import initial_error


# ---------------------------------------------------------------------------------------------
# Literal reference: lib/prune.py::prune_DSnoT (commit 4c029df), one row at a time, in float32 like
# the original, including its list layout (kept entries as zeros inside the grow sort; the C == 0
# slots of return_reorder_indice pointing at the lowest-Wanda kept weight) and the writes that
# frozen rows keep receiving while other rows of the layer are still active.
# ---------------------------------------------------------------------------------------------
def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _official_row_unstructured(W, keep, mean, var, sq_norm, T, tau, p, same_sign):
    cols = W.numel()
    C = W * mean
    pruned = (~keep).clone()  # official weight_mask: True = pruned
    metric = C.clone()
    metric[keep] = 0
    eps = metric.sum()  # float32, as torch.sum in the original
    sign0 = _sign(eps.item())
    if p:
        metric = metric / var.pow(p)
    grow = torch.sort(metric, stable=True).indices.tolist()
    wanda = W.abs() * sq_norm.sqrt()
    kept_by_wanda = torch.sort(torch.where(keep, wanda, torch.inf), stable=True).indices[: int(keep.sum())].tolist()
    neg = [j for j in kept_by_wanda if C[j] < 0]
    pos = [j for j in kept_by_wanda if C[j] > 0]
    zeros = len(kept_by_wanda) - len(neg) - len(pos)
    prune_list = neg + [kept_by_wanda[0]] * zeros + pos[::-1]
    g_ptr = [0, cols - 1]
    q_ptr = [0, len(prune_list) - 1]
    active, frozen_at, history = True, T, []
    for t in range(T):
        side_g = int(eps.item() > 0)
        g = grow[g_ptr[side_g]]
        g_ptr[side_g] += 1 if side_g == 0 else -1
        side_q = int(eps.item() < 0)
        q = prune_list[q_ptr[side_q]]
        q_ptr[side_q] += 1 if side_q == 0 else -1
        after = eps + C[q] - C[g]
        update = active and abs(eps.item()) > tau
        if same_sign:
            update = update and _sign(after.item()) == sign0
        history.append((q, g, update))
        if update:
            eps = eps + C[q]
            eps = eps - C[g]
        elif active:
            active, frozen_at = False, t
    return pruned, history, frozen_at


def _official_row_nm(W, keep, mean, var, sq_norm, T, tau, p, m):
    C = W * mean
    pruned = (~keep).clone()
    metric = C.clone()
    metric[keep] = 0
    eps = metric.sum()
    sign0 = _sign(eps.item())
    if p:
        metric = metric / var.pow(p)
    grow = torch.sort(metric, stable=True).indices.tolist()
    initial_metric = torch.where(keep, W.abs() * sq_norm.sqrt(), torch.inf)
    g_ptr = [0, W.numel() - 1]
    active, frozen_at, history = True, T, []
    for t in range(T):
        side = int(eps.item() > 0)
        g = grow[g_ptr[side]]
        g_ptr[side] += 1 if side == 0 else -1
        start = g - g % m
        q = start + int(torch.topk(initial_metric[start:start + m], 1, largest=False).indices)
        after = eps + C[q] - C[g]
        update = active and _sign(after.item()) == sign0 and abs(eps.item()) > tau
        initial_metric[q] = torch.inf
        history.append((q, g, update))
        if update:
            eps = eps + C[q]
            eps = eps - C[g]
        elif active:
            active, frozen_at = False, t
    return pruned, history, frozen_at


def official_reference(W, keep, mean, var, sq_norm, T=50, tau=0.1, p=1.0, same_sign=False, m=0):
    """Keep mask the official code produces from this initial mask (True = kept)."""
    W = W.float()
    rows = [(_official_row_nm(W[i], keep[i], mean, var, sq_norm, T, tau, p, m) if m else
             _official_row_unstructured(W[i], keep[i], mean, var, sq_norm, T, tau, p, same_sign)) for i in range(W.shape[0])]
    cycles = min(T, max(frozen_at + 1 for _, _, frozen_at in rows))  # the layer loop stops once every row froze
    out = []
    for pruned, history, _ in rows:
        for q, g, update in history[:cycles]:
            pruned[q] = update
            pruned[g] = not update
        out.append(~pruned)
    return torch.stack(out)


def random_problem(rows, cols, sparsity=None, n=0, m=0, seed=0, mean_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen)
    mean = torch.randn(cols, generator=gen) * mean_scale
    var = torch.rand(cols, generator=gen) + 0.05
    sq_norm = var + mean.square() + torch.rand(cols, generator=gen)
    keep = ops.wanda_mask(W, sq_norm, sparsity, n, m)
    return W, keep, mean, var, sq_norm


@pytest.mark.parametrize("case", [
    dict(rows=40, cols=300, sparsity=0.5, T=50, tau=0.1, same_sign=False),
    dict(rows=40, cols=256, sparsity=0.6, T=20, tau=2.0, same_sign=False),   # threshold stops rows early
    dict(rows=40, cols=400, sparsity=0.7, T=50, tau=0.1, same_sign=True),
    dict(rows=40, cols=301, sparsity=0.3, T=40, tau=0.0, same_sign=False, p=2.0),
    dict(rows=30, cols=512, sparsity=0.9, T=30, tau=0.5, same_sign=False, p=0.0),
])
def test_official_matches_literal_reference(case):
    case = dict(case)
    T, tau, same, p = case.pop("T"), case.pop("tau"), case.pop("same_sign"), case.pop("p", 1.0)
    W, keep, mean, var, sq_norm = random_problem(**case)
    want = official_reference(W, keep, mean, var, sq_norm, T=T, tau=tau, p=p, same_sign=same)
    got = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=T, threshold=tau, var_power=p, same_sign=same, mode="official")
    assert (got != keep).any()  # swaps happened
    assert torch.equal(got, want), f"{(got != want).sum().item()} mask entries differ"  # reproduced exactly
    assert torch.equal(got.sum(1), keep.sum(1))  # per-row sparsity exact


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_official_nm_matches_literal_reference(n, m):
    # 256 columns: every row has more grow candidates of each sign than cycles. (With fewer, the
    # official code's frozen rows keep walking their grow pointer into kept weights and prune them.)
    W, keep, mean, var, sq_norm = random_problem(32, 256, n=n, m=m, seed=n + m)
    cycles = 20
    pruned = ~keep
    candidates = torch.minimum(((W * mean > 0) & pruned).sum(1), ((W * mean < 0) & pruned).sum(1))
    assert candidates.min() > cycles  # the premise above (at 30 cycles 1:4 breaks it, and 1-12 entries differ)
    want = official_reference(W, keep, mean, var, sq_norm, T=cycles, tau=0.05, m=m)
    got = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=cycles, threshold=0.05, n=n, m=m, mode="official")
    assert (got != keep).any()
    assert torch.equal(got, want), f"{(got != want).sum().item()} mask entries differ"  # reproduced exactly
    assert torch.equal((~got).reshape(32, -1, m).sum(-1), torch.full((32, 256 // m), n))


def test_official_reduces_error_until_threshold():
    W, keep, mean, var, sq_norm = random_problem(64, 512, 0.5, seed=3)
    tau = 0.5
    got, eps = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=512, threshold=tau, same_sign=True, mode="official", return_error=True)
    eps0 = initial_error(W, keep, mean)
    # with same_sign, |eps| only shrinks; a row stops when it reached the threshold or the sign would flip
    assert (eps.abs() <= eps0.abs() + 1e-9).all()
    assert (eps.sign() * eps0.sign() >= 0).all()
    torch.testing.assert_close(eps, initial_error(W, got, mean), rtol=1e-9, atol=1e-9)


def test_error_mode_never_increases_expected_squared_error():
    seqlen = 64
    W, keep, mean, var, sq_norm = random_problem(48, 256, 0.6, seed=5, mean_scale=3.0)
    got = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=64, mode="error", seqlen=seqlen)

    def expected_error(k):
        pruned = ~k
        eps = torch.where(pruned, W * mean, 0).double().sum(1)
        cost = (W.double().square() * (seqlen * sq_norm.double() - mean.double().square())).where(pruned, 0).sum(1)
        return eps.square() + cost

    before, after = expected_error(keep), expected_error(got)
    assert (got != keep).any()
    assert (after <= before + 1e-6 * before.abs()).all()
    assert (after < before).any()
    assert torch.equal(got.sum(1), keep.sum(1))


def test_zero_cycles_and_zero_error_rows_change_nothing():
    W, keep, mean, var, sq_norm = random_problem(8, 64, 0.5)
    assert torch.equal(ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=0, mode="official"), keep)
    zero_mean = torch.zeros_like(mean)  # C = 0 everywhere: eps is exactly 0, no candidates
    assert torch.equal(ops.dsnot(W, keep, zero_mean, var, sq_norm, threshold=0.0, mode="official"), keep)
    assert torch.equal(ops.dsnot(W, keep, zero_mean, var, sq_norm, mode="error", seqlen=8), keep)


def test_exhausted_lists_freeze_the_row_without_double_pruning():
    # every kept weight has C > 0 and eps > 0: the prune list for eps > 0 (C < 0) is empty
    W = torch.rand(6, 40) + 0.1
    mean = torch.rand(40) + 0.1
    var, sq_norm = torch.ones(40), torch.ones(40) * 2
    keep = ops.wanda_mask(W, sq_norm, 0.5)
    got, eps = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=50, threshold=0.0, mode="official", return_error=True)
    assert torch.equal(got, keep)
    # a few C < 0 weights: they are used up, then the row freezes (never prunes one twice)
    W[:, ::13] *= -1
    keep = ops.wanda_mask(W, sq_norm, 0.5)
    got, eps = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=50, threshold=0.0, mode="official", return_error=True)
    assert torch.equal(got.sum(1), keep.sum(1))
    newly_pruned = (keep & ~got).sum(1)
    assert (newly_pruned <= (keep & (W * mean < 0)).sum(1)).all() and newly_pruned.sum() > 0
    torch.testing.assert_close(eps, initial_error(W, got, mean), rtol=1e-9, atol=1e-9)


def test_zero_variance_columns_are_ranked_first():
    W, keep, mean, var, sq_norm = random_problem(4, 64, 0.5, seed=9)
    var[5] = 0.0  # constant input feature: v = C / 0 = +-inf, the first grow candidate of its sign
    got = ops.dsnot(W, keep, mean, var, sq_norm, max_cycles=5, threshold=0.0, mode="official")
    assert torch.equal(got.sum(1), keep.sum(1))


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _args():
    W, keep, mean, var, sq_norm = random_problem(4, 16, 0.5)
    return dict(weight=W, keep=keep, mean=mean, var=var, sq_norm=sq_norm)


def _call(**over):
    args = _args()
    kwargs = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return ops.dsnot(args.pop("weight"), args.pop("keep"), args.pop("mean"), args.pop("var"), args.pop("sq_norm"), **kwargs)


@pytest.mark.parametrize("over,error,match", [
    (dict(weight=torch.randn(4, 16, 1)), ValueError, "weight must be 2-D"),
    (dict(weight=torch.randint(0, 3, (4, 16))), TypeError, "weight must be a floating"),
    (dict(weight=torch.full((4, 16), float("nan"))), ValueError, "weight contains NaN"),
    (dict(keep=torch.ones(4, 16)), TypeError, "keep must be a bool tensor"),
    (dict(keep=torch.ones(4, 15, dtype=torch.bool)), ValueError, r"keep must have shape \(4, 16\)"),
    (dict(mean=torch.randn(15)), ValueError, "mean must have 16 entries"),
    (dict(var=torch.randn(4, 16)), ValueError, "var must be 1-D"),
    (dict(sq_norm=torch.ones(16, dtype=torch.int64)), TypeError, "sq_norm must be a floating"),
    (dict(mean=torch.tensor([float("inf")] + [0.0] * 15)), ValueError, "mean contains NaN/Inf"),
    (dict(var=torch.tensor([float("nan")] + [1.0] * 15)), ValueError, "var contains NaN/Inf"),
    (dict(sq_norm=-torch.ones(16)), ValueError, "sq_norm has negative entries"),
    (dict(var=-torch.ones(16)), ValueError, "var has negative entries"),
    (dict(max_cycles=-1), ValueError, "max_cycles must be an integer >= 0"),
    (dict(max_cycles=2.5), ValueError, "max_cycles must be an integer"),
    (dict(threshold=-0.1), ValueError, "threshold must be a finite number >= 0"),
    (dict(threshold=float("inf")), ValueError, "threshold must be a finite"),
    (dict(threshold="a"), TypeError, "threshold must be a number"),
    (dict(var_power=-1.0), ValueError, "var_power must be a finite number >= 0"),
    (dict(same_sign=1), TypeError, "same_sign must be True or False"),
    (dict(mode="fast"), ValueError, "unknown DSnoT mode 'fast'"),
    (dict(n=2, m=0), ValueError, "N:M needs"),
    (dict(n=2, m=3), ValueError, "divisible by 3"),
    (dict(n=1, m=4), ValueError, "initial keep mask is not 1:4"),
    (dict(mode="error"), ValueError, "needs seqlen="),
    (dict(mode="error", seqlen=0), ValueError, "seqlen must be an integer >= 1"),
    (dict(backend="cuda", mode="official"), NotImplementedError, "has no cuda backend"),
    (dict(backend="gpu", mode="official"), ValueError, "unknown backend"),
])
def test_bad_inputs(over, error, match):
    with pytest.raises(error, match=match):
        _call(**over)


def test_nm_mask_must_match_pattern_and_devices_must_agree():
    W, keep, mean, var, sq_norm = random_problem(4, 16, n=2, m=4)
    assert ops.dsnot(W, keep, mean, var, sq_norm, n=2, m=4, mode="official").shape == keep.shape
    with pytest.raises(ValueError, match="initial keep mask is not 2:4"):
        ops.dsnot(W, ops.wanda_mask(W, sq_norm, 0.5), mean, var, sq_norm, n=2, m=4, mode="official")
    with pytest.raises(ValueError, match="one device"):
        ops.dsnot(W, keep, mean.to("meta"), var, sq_norm, n=2, m=4, mode="official")
