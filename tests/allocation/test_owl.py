"""OWL allocation: the formula against hand computations, the dense pre-pass, exact budgets, errors."""
import pytest
import torch

import sparsekit
from sparsekit import PruneConfig
from sparsekit.allocation.owl import exact_layer_sparsities, outlier_ratio, owl_sparsities
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from tests.helpers import tiny_gpt2, tiny_llama


def calib(n=4, seqlen=16):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(2))


def test_outlier_ratio_by_hand():
    scores = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([[1.0, 10.0]])]  # mean 2.8, 2 x mean = 5.6
    assert outlier_ratio(scores, 2.0) == pytest.approx(1 / 5)
    assert outlier_ratio(lambda: iter(scores), 2.0) == pytest.approx(1 / 5)
    assert outlier_ratio(scores, 0.1) == 1.0


def test_owl_formula_by_hand():
    # D = 1..4: normalised (D - 1) / 3 * 2 * 0.08 = [0, .0533, .1067, .16], mean .08 -> densities .42 .. .58
    got = owl_sparsities([1.0, 2.0, 3.0, 4.0], 0.5, 0.08)
    assert got == pytest.approx([0.58, 0.5266666666666667, 0.4733333333333333, 0.42])
    assert sum(got) / 4 == pytest.approx(0.5, abs=1e-12)
    assert owl_sparsities([3.0, 3.0], 0.6, 0.08) == pytest.approx([0.6, 0.6])  # no spread: uniform
    asym = owl_sparsities([0.0, 0.0, 1.0], 0.7, 0.1)  # densities [0, 0, .2] - .0667 + .3
    assert asym == pytest.approx([0.7666666666666667, 0.7666666666666667, 0.5666666666666667])


def test_unequal_blocks_keep_the_parameter_weighted_mean():
    got = owl_sparsities([1.0, 2.0, 5.0], 0.6, 0.05, sizes=[100, 300, 600])
    assert sum(n * s for n, s in zip([100, 300, 600], got)) / 1000 == pytest.approx(0.6, abs=1e-12)
    plain = owl_sparsities([1.0, 2.0, 5.0], 0.6, 0.05)
    assert [a - b for a, b in zip(got, plain)] == pytest.approx([got[0] - plain[0]] * 3)  # one common shift


def test_lambda_too_large_is_refused():
    with pytest.raises(ValueError, match="lower --owl-lambda"):
        owl_sparsities([0.0, 1.0], 0.95, 0.1)


def test_exact_layer_sparsities_meet_the_budget():
    layers = [("a", 6, 10, 0.55), ("b", 4, 7, 0.61), ("c", 6, 10, 0.43)]
    got = exact_layer_sparsities(layers, 0.53)
    counts = {n: int(c * got[n]) for n, r, c, _ in layers}
    assert counts == {n: int(r * c * got[n]) // r for n, r, c, _ in layers}  # per row and per matrix agree
    pruned = sum(r * counts[n] for n, r, _, _ in layers)
    budget = round(0.53 * (60 + 28 + 60))
    assert budget - min(r for _, r, _, _ in layers) < pruned <= budget


def dense_outlier_ratios(model, m=5.0):
    """D per block from the dense model's own forward (hooks on every target linear)."""
    path, blocks = find_blocks(model)
    sq, views = {}, [select_layers(b, f"{path}.{i}") for i, b in enumerate(blocks)]
    hooks = []
    for block_views in views:
        for v in block_views:
            def hook(module, args, out, name=v.name):
                x = args[0].float()
                sq[name] = sq.get(name, 0) + x.pow(2).sum(dim=(0, 1))
            hooks.append(v.module.register_forward_hook(hook))
    with torch.no_grad():
        model(calib())
    for h in hooks:
        h.remove()
    return [outlier_ratio([v.weight.float().abs() * sq[v.name].sqrt() for v in bv], m) for bv in views], views


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_owl_end_to_end_matches_a_dense_hand_pass(method):
    model = tiny_llama(layers=3)
    ratios, views = dense_outlier_ratios(model)
    expected_blocks = owl_sparsities(ratios, 0.6, 0.08, [sum(v.weight.numel() for v in bv) for bv in views])
    expected = exact_layer_sparsities([(v.name, v.out_features, v.in_features, s)
                                       for s, bv in zip(expected_blocks, views) for v in bv], 0.6)
    report = sparsekit.prune(model, calib(), PruneConfig(method=method, sparsity=0.6, allocation="owl", batch_size=2))
    for layer in report.layers:
        assert layer.target == pytest.approx(expected[layer.name], abs=1e-9)
        if method != "sparsegpt":  # SparseGPT counts per 128-column block
            assert layer.reached == pytest.approx(int(layer.target * layer.shape[1]) / layer.shape[1])
    assert len({round(s, 6) for s in expected_blocks}) == 3
    assert expected_blocks[ratios.index(max(ratios))] == min(expected_blocks)  # most outliers: least pruned
    total = sum(r.shape[0] * r.shape[1] for r in report.layers)
    print(f"OWL+{method} target 0.6: reached {report.sparsity:.6f}")
    tolerance = 32 if method != "sparsegpt" else 32 + 6 * len(report.layers)
    assert abs(report.sparsity * total - 0.6 * total) < tolerance


def test_owl_with_besa_and_gpt2():
    report = sparsekit.prune(tiny_gpt2(), calib(), PruneConfig(method="wanda", sparsity=0.5, allocation="owl",
                                                                allocation_options={"m": 3.0, "lam": 0.05}))
    assert {round(r.target, 2) for r in report.layers} != {0.5}
    report = sparsekit.prune(tiny_llama(), calib(), PruneConfig(method="besa", sparsity=0.5, allocation="owl", batch_size=2,
                                                                 method_options={"optimizer": "adamw"}))
    total = sum(r.shape[0] * r.shape[1] for r in report.layers)
    assert abs(report.sparsity - 0.5) * total < 32


def test_nm_is_refused():
    with pytest.raises(ValueError, match="unstructured"):
        PruneConfig(method="wanda", pattern="2:4", sparsity=None, allocation="owl")


@pytest.mark.parametrize("kwargs, message", [
    ({"allocation": "owl", "allocation_options": {"m": 0}}, "must be > 0"),
    ({"allocation": "owl", "allocation_options": {"lam": -0.1}}, r"\[0, 0.5\)"),
    ({"allocation": "owl", "allocation_options": {"gamma": 1}}, "gamma"),
    ({"allocation": "owx"}, "unknown allocation"),
    ({"allocation_options": {"m": 5}}, "without an allocation"),
    ({"allocation": "owl", "sparsity": {"re:.*": 0.5}}, "overall sparsity"),
])
def test_bad_allocation_options(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PruneConfig(method="wanda", **{"sparsity": 0.5, **kwargs})


def test_cli_allocation_owl(tmp_path):
    import json

    from sparsekit.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"line {i} of the calibration text." for i in range(300)))
    base = ["prune", "--model", str(tmp_path / "model"), "--method", "wanda", "--nsamples", "4", "--seqlen", "16",
            "--device", "cpu", "--calib", str(tmp_path / "calib.txt"), "--allocation", "owl"]
    assert main(base + ["--sparsity", "0.7", "--owl-m", "4", "--owl-lambda", "0.05", "--json", str(tmp_path / "out.json")]) == 0
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["allocation"] == {"name": "owl", "m": 4.0, "lam": 0.05}
    assert summary["sparsity_reached"] == pytest.approx(0.7, abs=1e-3)
    assert len({round(layer["target"], 3) for layer in summary["layers"]}) > 1
    assert main(base + ["--pattern", "2:4"]) == 2  # N:M refused with a clear error
    assert main(base[:-2] + ["--owl-m", "4"]) == 2  # OWL options without --allocation owl
