"""--method admm / alps and `update` (alps | admm) after other methods' masks, through the pipeline."""
import json

import pytest
import torch

import sparsekit
from sparsekit import PruneConfig, ops
from sparsekit.cli import main as cli_main
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from sparsekit.pruners import make_pruner
from sparsekit.ops.stats import HessianStats
from tests.helpers import save_tiny_checkpoint, tiny_llama


def calib(n=6, seqlen=16, vocab=256):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(0))


def layers_of(model):
    path, blocks = find_blocks(model)
    return [v for i, b in enumerate(blocks) for v in select_layers(b, f"{path}.{i}")]


@pytest.mark.parametrize("method", ["admm", "alps"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_admm_and_alps_prune_every_layer_exactly(method, pattern):
    model = tiny_llama()
    config = PruneConfig(method=method, sparsity=0.6 if pattern == "unstructured" else None, pattern=pattern, batch_size=3)
    report = sparsekit.prune(model, calib(), config)
    for view in layers_of(model):
        zeros = view.weight == 0
        if pattern == "2:4":
            assert zeros.reshape(view.out_features, -1, 4).sum(-1).eq(2).all(), view.name
        else:  # one count over the whole layer, rounded as each official code does
            pruned = int(zeros.numel() * 0.6) if method == "admm" else zeros.numel() - round(zeros.numel() * 0.4)
            assert zeros.sum().item() == pruned, view.name
    assert torch.isfinite(model(calib()).logits).all()
    assert report.sparsity == pytest.approx(0.6 if pattern == "unstructured" else 0.5, abs=1e-3)


def _first_block_hessians(model, ids):
    """H of each first-block layer's input on the dense model (what the pipeline measures for block 0)."""
    path, blocks = find_blocks(model)
    views = select_layers(blocks[0], f"{path}.0")
    stats = {v.name: HessianStats(v.in_features) for v in views}
    def hook_for(name):
        def hook(module, args, output):
            stats[name].update(args[0])
        return hook

    hooks = [v.module.register_forward_hook(hook_for(v.name)) for v in views]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {name: s.hessian for name, s in stats.items()}, views


@pytest.mark.parametrize("update", ["alps", "admm"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_update_keeps_the_methods_mask_and_refits_with_reconstruct(method, update):
    dense = tiny_llama()
    ids = calib()
    hessians, dense_views = _first_block_hessians(dense, ids)
    dense_weights = {v.name: v.weight.detach().clone() for v in dense_views}
    plain, updated = tiny_llama(), tiny_llama()
    sparsekit.prune(plain, ids, PruneConfig(method=method, sparsity=0.5, batch_size=6))
    sparsekit.prune(updated, ids, PruneConfig(method=method, sparsity=0.5, batch_size=6, method_options={"update": update}))
    plain_views = {v.name: v for v in layers_of(plain)}
    for view in layers_of(updated):
        if view.name not in hessians:
            continue  # later blocks see the updated block's outputs, so their masks may differ
        keep = plain_views[view.name].weight != 0
        assert torch.equal(view.weight != 0, keep), view.name
        init = plain_views[view.name].weight if (method == "sparsegpt" and update == "alps") else None
        expected = ops.reconstruct(dense_weights[view.name], keep, hessians[view.name], method=update, init=init)
        torch.testing.assert_close(view.weight, expected, rtol=1e-4, atol=1e-5)
        H = hessians[view.name].double()

        def error(w):
            delta = (dense_weights[view.name] - w).double()
            return torch.einsum("ij,jk,ik->", delta, H, delta).item()

        assert error(view.weight) < error(plain_views[view.name].weight), view.name


def test_dsnot_then_update_runs_with_the_sparsegpt_start():
    model = tiny_llama()
    options = {"initial": "sparsegpt", "update": "alps", "update_iters": 20}
    report = sparsekit.prune(model, calib(), PruneConfig(method="dsnot", sparsity=0.5, batch_size=6, method_options=options))
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    for view in layers_of(model):
        assert (view.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
        assert torch.isfinite(view.weight).all()


@pytest.mark.parametrize("method,options,match", [
    ("wanda", {"update": "obs"}, "unknown update"),
    ("wanda", {"update_iters": -1}, "update_iters"),
    ("besa", {"update": "alps"}, "takes no weight update"),
    ("admm", {"iterative_prune": 30}, None),
])
def test_bad_update_options(method, options, match):
    if match is None:  # checked when the layer is pruned, by the op
        model = tiny_llama()
        with pytest.raises(ValueError, match="iterative_prune"):
            sparsekit.prune(model, calib(), PruneConfig(method=method, sparsity=0.5, method_options=options))
        return
    with pytest.raises(ValueError, match=match):
        make_pruner(method, **options)


def test_cli_update_flag(tmp_path):
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"The river {i} flows past the old mill." for i in range(300)))
    out = tmp_path / "summary.json"
    rc = cli_main(["prune", "--model", str(tmp_path / "model"), "--nsamples", "2", "--seqlen", "32", "--device", "cpu",
                   "--calib", str(tmp_path / "calib.txt"), "--method", "wanda", "--sparsity", "0.5", "--update", "alps",
                   "--json", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["method_options"] == {"update": "alps"}
    assert summary["sparsity_reached"] == pytest.approx(0.5)
