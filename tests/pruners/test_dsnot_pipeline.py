"""The `dsnot` method in the block pipeline and on the command line (tiny random models)."""
import json

import pytest
import torch

import sparsekit
from sparsekit import PruneConfig, ops
from sparsekit.cli import main
from sparsekit.pruners import make_pruner
from sparsekit.pruners.dsnot import official_bool
from tests.helpers import save_tiny_checkpoint, tiny_llama

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def calib(n=8, seqlen=24, vocab=256, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def block0(model):
    layer = model.model.layers[0]
    return {name: getattr(layer.self_attn if name in ATTENTION else layer.mlp, name).weight.detach().clone()
            for name in ATTENTION + MLP}


def pruned(method, pattern="unstructured", sparsity=0.5, **options):
    model = tiny_llama()
    report = sparsekit.prune(model, calib(), PruneConfig(method=method, sparsity=sparsity if pattern == "unstructured" else None,
                                                          pattern=pattern, batch_size=4, method_options=options))
    return model, report


@pytest.mark.parametrize("initial", ["wanda", "magnitude", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("mode", ["official", "error", "exact"])
def test_every_initial_method_and_pattern(initial, pattern, mode):
    model, report = pruned("dsnot", pattern, initial=initial, mode=mode, max_cycles=8, skip_layer="none")
    assert report.sparsity == pytest.approx(0.5)
    for name, w in block0(model).items():
        zeros = w == 0
        if pattern == "2:4":
            assert zeros.reshape(w.shape[0], -1, 4).sum(-1).ge(2).all(), name
        elif initial != "sparsegpt":  # Wanda / magnitude init: exactly per row; SparseGPT: per column block
            assert zeros.sum(1).ge(w.shape[1] // 2).all(), name
    assert torch.isfinite(model(calib()).logits).all()


def test_official_mode_changes_attention_only():
    wanda = block0(pruned("wanda")[0])
    dsnot = block0(pruned("dsnot", mode="official", max_cycles=20, threshold=0.0)[0])
    for name in MLP:  # --skip_layer mlp (the official default): block 0's MLP keeps Wanda's mask
        assert torch.equal(dsnot[name], wanda[name]), name
    assert any(not torch.equal(dsnot[name] == 0, wanda[name] == 0) for name in ATTENTION)
    everything = block0(pruned("dsnot", mode="official", max_cycles=20, threshold=0.0, skip_layer="none")[0])
    assert any(not torch.equal(everything[name] == 0, wanda[name] == 0) for name in MLP)


def test_zero_cycles_reproduce_the_initial_method():
    for initial in ("wanda", "sparsegpt"):
        base = block0(pruned(initial)[0])
        same = block0(pruned("dsnot", initial=initial, max_cycles=0, skip_layer="none")[0])
        for name in base:
            assert torch.equal(base[name], same[name]), (initial, name)


def test_sparsegpt_init_regrows_obs_values():
    torch.manual_seed(0)
    W = torch.randn(16, 64)
    X = torch.randn(512, 64) + torch.randn(64) * 2  # inputs with a mean: DSnoT has work to do
    H = 2 * X.t() @ X / 8
    stats = ops.ActivationStats(64).update(X.reshape(8, 64, 64))
    updated, keep = ops.sparsegpt(W, H, 0.5, keep_pruned_values=True)
    new = ops.dsnot(updated, keep, stats.mean, stats.var, stats.sq_norm, max_cycles=10, threshold=0.0, mode="official")
    grown = new & ~keep
    assert grown.any()
    final = updated * new
    assert torch.equal(final[grown], updated[grown]) and (final[grown] != 0).all()


def test_official_flag_semantics():
    pruner = make_pruner("dsnot", initial="magnitude", skip_layer="self_attn", without_same_sign=True, mode="official")
    assert pruner.same_sign is False
    assert official_bool("False") is True and official_bool("") is False  # argparse type=bool: non-empty is True
    assert pruner.skipped("self_attn.q_proj") and not pruner.skipped("mlp.up_proj")
    assert make_pruner("dsnot", mode="official").skip_layer == "mlp"
    assert make_pruner("dsnot", mode="official").initial == "wanda" and make_pruner("dsnot").initial == "wanda"
    assert make_pruner("dsnot", mode="official", without_same_sign=False).same_sign is True
    assert make_pruner("dsnot", skip_layer="re:self_.*").skipped("self_attn.o_proj")


def test_initial_mask_is_the_initial_methods_prune_layer():
    """DSnoT with no swaps (max_cycles=0) returns its initial method's masks: magnitude per row, SparseGPT with
    the OBS weights, in every layer."""
    for initial, method, options in (("magnitude", "magnitude", {"scope": "row"}), ("wanda", "wanda", {}),
                                     ("sparsegpt", "sparsegpt", {})):
        expected, got = tiny_llama(), tiny_llama()
        sparsekit.prune(expected, calib(), PruneConfig(method=method, sparsity=0.5, batch_size=4, method_options=options))
        sparsekit.prune(got, calib(), PruneConfig(method="dsnot", sparsity=0.5, batch_size=4,
                                                  method_options={"initial": initial, "max_cycles": 0}))
        for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values()):
            assert torch.equal(a, b), (initial, name)


@pytest.mark.parametrize("options, message", [
    ({"initial": "besa"}, "unknown DSnoT initial method"),
    ({"mode": "fast"}, "unknown DSnoT mode"),
    ({"same_sign": True, "without_same_sign": True}, "contradict"),
    ({"max_cycles": -1}, "max_cycles must be an integer >= 0"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        pruned("dsnot", **options)


def test_cli_runs_dsnot(tmp_path):
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"The river {i} flows past the old mill." for i in range(300)))
    js = tmp_path / "summary.json"
    rc = main(["prune", "--model", str(tmp_path / "model"), "--nsamples", "4", "--seqlen", "32", "--device", "cpu",
               "--calib", str(tmp_path / "calib.txt"), "--method", "dsnot", "--sparsity", "0.6",
               "--initial_method", "magnitude", "--max_cycle_time", "5", "--update_threshold", "0.3",
               "--pow_of_var_regrowing", "0", "--skip_layer", "self_attn", "--without_same_sign", "False",
               "--dsnot-mode", "official", "--json", str(js)])
    assert rc == 0
    summary = json.loads(js.read_text())
    assert summary["sparsity_reached"] == pytest.approx(0.6, abs=0.01)
    # the official script's spellings are aliases of the --dsnot-* options
    assert summary["method_options"] == {"initial": "magnitude", "max_cycles": 5, "threshold": 0.3, "var_power": 0.0,
                                         "skip_layer": "self_attn", "without_same_sign": True, "mode": "official"}
