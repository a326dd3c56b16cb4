"""BESA on tiny random models: exact budgets, per-row vs per-layer allocation, in-row methods, errors."""
import pytest
import torch

import sparsekit
from sparsekit import PruneConfig
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from sparsekit.ops import expected_sparsity, reachable_sparsity, target_log_prior
from sparsekit.pruners import make_pruner
from sparsekit.pruners.besa import reconstruction_loss
from tests.helpers import needs_triton, tiny_gpt2, tiny_llama, tiny_opt

FAST = {"optimizer": "adamw", "lr": 0.05}  # moves the logits within the few steps of a tiny run


def calib(n=4, seqlen=16):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(1))


def block_views(model):
    path, blocks = find_blocks(model)
    return [select_layers(b, f"{path}.{i}") for i, b in enumerate(blocks)]


def prune_with(pruner, model, monkeypatch, sparsity=0.5):
    """Run the pipeline with this pruner instance (to inspect what it learned)."""
    monkeypatch.setattr("sparsekit.pruning.make_pruner", lambda *a, **k: pruner)
    return sparsekit.prune(model, calib(), PruneConfig(method="besa", sparsity=sparsity, batch_size=1))


def run_besa(model, sparsity=0.5, batch_size=1, **options):
    config = PruneConfig(method="besa", sparsity=sparsity, batch_size=batch_size, method_options={**FAST, **options})
    return sparsekit.prune(model, calib(), config)


@pytest.mark.parametrize("granularity", ["row", "layer"])
@pytest.mark.parametrize("sparsity, sigmoid", [(0.5, True), (0.7, True), (0.6, False), (0.37, False)])
def test_reaches_the_target_exactly_in_every_block(granularity, sparsity, sigmoid):
    model = tiny_llama()
    report = run_besa(model, sparsity, granularity=granularity, sigmoid=sigmoid)
    for views in block_views(model):
        numel = sum(v.weight.numel() for v in views)
        pruned = sum(int((v.weight == 0).sum()) for v in views)
        assert pruned == round(sparsity * numel)
    total = sum(r.shape[0] * r.shape[1] for r in report.layers)
    print(f"besa {granularity} target {sparsity}: reached {report.sparsity:.6f}")
    assert report.sparsity == pytest.approx(round(sparsity * total / 2) * 2 / total, abs=1e-12)  # two equal blocks


def test_row_granularity_learns_per_row_sparsities_layer_granularity_one_per_layer(monkeypatch):
    per_row, per_layer = make_pruner("besa", granularity="row", **FAST), make_pruner("besa", granularity="layer", **FAST)
    for pruner in (per_row, per_layer):
        model = tiny_llama()
        prune_with(pruner, model, monkeypatch)
        zeros_per_row = [(v.weight == 0).sum(1) for views in block_views(model) for v in views]
        if pruner is per_layer:
            assert all(int(z.max() - z.min()) <= 1 for z in zeros_per_row)  # one count per layer (+1 to meet the budget)
            assert all(s.unique().numel() == 1 for s in per_layer.learned.values())
        else:
            assert any(int(z.max() - z.min()) > 1 for z in zeros_per_row)
            assert all(s.std() > 0 for s in per_row.learned.values())


def test_wanda_row_method_gives_besas_own_masks_with_the_wanda_metric():
    a, b = tiny_llama(), tiny_llama()
    run_besa(a, 0.6)
    run_besa(b, 0.6, row_method="wanda")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa == 0, pb == 0)


def test_sparsegpt_row_method_keeps_per_row_counts_and_updates_weights():
    a, b, dense = tiny_llama(), tiny_llama(), tiny_llama()
    run_besa(a, 0.6, metric="sparsegpt")
    run_besa(b, 0.6, metric="sparsegpt", row_method="sparsegpt", row_method_options={"blocksize": 32})
    for va, vb, vd in zip(*(block_views(m)[0] for m in (a, b, dense))):  # block 1 sees different inputs
        assert torch.equal((va.weight == 0).sum(1), (vb.weight == 0).sum(1)), va.name
        kept = vb.weight != 0
        assert not torch.equal(vb.weight[kept], vd.weight[kept])  # OBS updated the kept weights


def test_dsnot_row_method_refines_besas_masks_at_the_same_counts():
    a, b = tiny_llama(), tiny_llama()
    run_besa(a, 0.6)
    run_besa(b, 0.6, row_method="dsnot", row_method_options={"max_cycles": 5})
    changed = 0
    for va, vb in zip(block_views(a)[0], block_views(b)[0]):  # block 1 sees different inputs
        assert torch.equal((va.weight == 0).sum(1), (vb.weight == 0).sum(1)), va.name
        changed += int(((va.weight == 0) != (vb.weight == 0)).sum())
    assert changed > 0


def test_paper_mode_prunes_floor_of_expected_sparsity(monkeypatch):
    pruner = make_pruner("besa", granularity="layer", exact=False, init="uniform", epochs=0)
    report = prune_with(pruner, tiny_llama(), monkeypatch, sparsity=0.6)
    for layer in report.layers:  # untrained uniform logits: s = 0.5, floor(0.5 * cols) per row, not the 0.6 asked
        assert layer.reached == pytest.approx(0.5)


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_opt])
def test_other_architectures_with_bias_and_conv1d(builder):
    model = builder()
    report = run_besa(model, 0.6, batch_size=2)
    total = sum(r.shape[0] * r.shape[1] for r in report.layers)
    assert abs(report.sparsity * total - 0.6 * total) <= 1
    assert torch.isfinite(model(calib()).logits).all()


@needs_triton
def test_triton_backend_gives_the_torch_backends_masks():
    a, b = tiny_llama(layers=1, hidden=32, intermediate=64), tiny_llama(layers=1, hidden=32, intermediate=64)
    sparsekit.prune(a, calib(2), PruneConfig(method="besa", sparsity=0.5, batch_size=1, backend="torch", method_options=FAST))
    sparsekit.prune(b, calib(2), PruneConfig(method="besa", sparsity=0.5, batch_size=1, backend="triton", method_options=FAST))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa == 0, pb == 0)


def test_training_moves_the_expected_sparsity_towards_the_target(monkeypatch):
    pruner = make_pruner("besa", granularity="layer", init="uniform", sigmoid=False, beta=50.0, epochs=3, **FAST)
    prune_with(pruner, tiny_llama(), monkeypatch, sparsity=0.7)
    learned = torch.stack([s.mean() for s in pruner.learned.values()])
    assert (learned > 0.55).all()  # started at 0.5, pulled up by the penalty


def test_target_log_prior_starts_at_the_target():
    assert torch.equal(target_log_prior(0.5), torch.zeros(101))  # the paper's start
    zero = torch.zeros(3, 101)
    for target in (0.2, 0.6, 0.8):
        prior = target_log_prior(target)
        for sigmoid in (True, False):
            assert expected_sparsity(zero, sigmoid, prior) == pytest.approx([target] * 3, abs=1e-5)
        lo, hi = reachable_sparsity(101, True, prior)
        assert lo < target - 0.05 and hi > target + 0.05
    lo, hi = reachable_sparsity(101, sigmoid=True)  # no prior: the paper's smoothing confines s around 0.5
    assert lo == pytest.approx(1 - hi) and 0.62 < hi < 0.63


def test_reconstruction_loss_formula():
    ref = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    out = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]])
    sigma = torch.tensor([10.0 ** 0.5, 2.0])
    expected = ((1 / sigma[0]) ** 2 + (1 / sigma[1]) ** 2) / 2
    assert reconstruction_loss(out, ref).item() == pytest.approx(expected.item())


def test_nm_pattern_is_refused():
    with pytest.raises(ValueError, match="N:M"):
        sparsekit.prune(tiny_llama(), calib(), PruneConfig(method="besa", pattern="2:4", sparsity=None))


@pytest.mark.parametrize("options, message", [
    ({"granularity": "column"}, "granularity"),
    ({"metric": "random"}, "metric"),
    ({"row_method": "gptq"}, "row_method"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"init": "random"}, "init"),
    ({"epochs": -1}, "epochs"),
    ({"beta": -1.0}, "beta"),
    ({"lr": 0.0}, "lr"),
    ({"d_coef": 0.0}, "d_coef"),
    ({"sparsity_step": 0.03}, "divide 1"),
    ({"train_samples": 0}, "train_samples"),
    ({"row_method": "wanda", "row_method_options": {"blocksize": 8}}, "has no option"),
    ({"row_method": "dsnot", "row_method_options": {"blocksize": 8}}, "has no option"),
    ({"row_method": "dsnot", "row_method_options": {"mode": "fast"}}, "unknown DSnoT mode"),
    ({"row_method": "dsnot", "row_method_options": {"initial": "sparsegpt"}}, "do not apply"),
    ({"row_method": "sparsegpt", "row_method_options": {"update": "alps"}}, "do not apply"),
    ({"row_method_options": {"blocksize": 8}}, "takes no row_method_options"),
    ({"colour": "red"}, "no option"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner("besa", **options)


def test_wanda_row_method_cuts_the_same_masks_as_besas_own_wanda_ranking():
    """The in-row method is Wanda's pruner at BESA's per-row counts: with the Wanda metric it must agree with BESA's
    own ranking exactly (and the learned counts do not depend on the row method)."""
    own, composed = tiny_llama(), tiny_llama()
    for model, row_method in ((own, "besa"), (composed, "wanda")):
        torch.manual_seed(0)
        sparsekit.prune(model, calib(), PruneConfig(method="besa", sparsity=0.5, batch_size=8,
                                                    method_options={"row_method": row_method}))
    for (name, a), b in zip(own.state_dict().items(), composed.state_dict().values()):
        assert torch.equal(a, b), name


def test_sigmoid_smoothing_without_prior_cannot_reach_high_sparsity():
    with pytest.raises(ValueError, match="init"):
        run_besa(tiny_llama(), 0.7, init="uniform")


def test_cli_runs_besa_and_reports_exact_sparsity(tmp_path, capsys):
    from sparsekit.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"line {i} of the calibration text." for i in range(300)))
    rc = main(["prune", "--model", str(tmp_path / "model"), "--method", "besa", "--sparsity", "0.6", "--nsamples", "4",
               "--seqlen", "16", "--batch-size", "1", "--device", "cpu", "--calib", str(tmp_path / "calib.txt"),
               "--besa-granularity", "layer", "--besa-optimizer", "adamw", "--besa-row-method", "wanda",
               "--json", str(tmp_path / "out.json")])
    assert rc == 0
    import json

    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["sparsity_reached"] == pytest.approx(0.6, abs=1e-4)
    assert summary["method_options"]["granularity"] == "layer"


def row_sparsity_widths(model):
    """Per block: max - min of the rows' pruned fractions over all its target layers."""
    widths = []
    for views in block_views(model):
        rows = torch.cat([(v.weight == 0).double().mean(dim=1) for v in views])
        widths.append((rows.max() - rows.min()).item())
    return widths


def test_default_settings_learn_a_non_uniform_allocation_whatever_the_forward_batch():
    """Issue 17: with the pipeline's default batch (8) a 32-sequence calibration gave Prodigy 4 steps per
    block, too few for its step size to grow from 1e-6, and BESA returned Wanda's uniform masks."""
    for batch_size in (8, 1):
        model = tiny_llama()
        report = sparsekit.prune(model, calib(), PruneConfig(method="besa", sparsity=0.5, batch_size=batch_size))
        widths = row_sparsity_widths(model)
        print(f"batch {batch_size}: row sparsity max - min per block {widths}")
        assert all(w >= 0.1 for w in widths), widths
        assert report.sparsity == pytest.approx(0.5, abs=1e-9)
        assert all(r.row_sparsity["max"] > r.row_sparsity["min"] for r in report.layers)


def test_paper_mode_also_learns_with_the_default_forward_batch():
    model = tiny_llama()
    sparsekit.prune(model, calib(), PruneConfig(method="besa", sparsity=0.5,
                                                method_options={"init": "uniform", "exact": False, "d_coef": 5}))
    assert all(w >= 0.1 for w in row_sparsity_widths(model))


def test_a_uniform_allocation_is_reported_and_warned_about(monkeypatch, caplog):
    pruner = make_pruner("besa", min_steps=0, train_batch=8)  # one step per block: the allocation cannot move
    monkeypatch.setattr("sparsekit.pruning.make_pruner", lambda *a, **k: pruner)
    with caplog.at_level("WARNING", logger="sparsekit.pruners.besa"):
        report = sparsekit.prune(tiny_llama(), calib(), PruneConfig(method="besa", sparsity=0.5, batch_size=8))
    warned = [r.getMessage() for r in caplog.records if "stayed uniform" in r.getMessage()]
    assert [m.split(":")[0] for m in warned] == ["besa block 0", "besa block 1"]
    assert all(s["learned"]["max"] - s["learned"]["min"] < 0.02 for s in pruner.spread.values())
    assert all(r.row_sparsity["std"] == 0 for r in report.layers)


def test_training_micro_batches_give_the_full_batchs_block_outputs():
    from sparsekit.pipeline.capture import block_output, capture_inputs
    from sparsekit.pruners.besa import batch_slice

    model = tiny_llama()
    _, blocks = find_blocks(model)
    inputs = capture_inputs(model, blocks, calib(), 4, torch.device("cpu"))
    pruner = make_pruner("besa", train_batch=3, min_steps=0)
    steps = pruner.training_steps(inputs, 1)
    assert [(start, x.shape[0]) for start, x, _, _ in steps] == [(0, 3), (3, 1)]
    with torch.no_grad():
        full = inputs.call_block(blocks[1], 1, inputs.hidden, "cpu")
        for start, x, args, kwargs in steps:
            torch.testing.assert_close(block_output(blocks[1](x, *args, **kwargs)), full[start:start + x.shape[0]])
    mask = torch.ones(4, 1, 5, 5)
    assert batch_slice({"m": mask, "pos": (torch.zeros(1, 5),)}, 1, 3, 4)["m"].shape[0] == 2


def test_min_steps_repeats_passes_and_train_samples_cuts_them():
    from sparsekit.pipeline.capture import capture_inputs

    model = tiny_llama()
    _, blocks = find_blocks(model)
    inputs = capture_inputs(model, blocks, calib(), 2, torch.device("cpu"))
    assert len(make_pruner("besa", min_steps=10).training_steps(inputs, 0)) == 12  # 3 passes of 4
    assert [s for s, *_ in make_pruner("besa", min_steps=0, train_samples=3).training_steps(inputs, 0)] == [0, 1, 2]
    assert make_pruner("besa", epochs=0).training_steps(inputs, 0) == []
