"""The block-by-block pipeline on tiny random models of several architectures."""
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import PruneConfig
from sparsekit.hf.blocks import find_blocks
from sparsekit.hf.layers import select_layers
from tests.helpers import tiny_gpt2, tiny_llama, tiny_opt

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "opt": tiny_opt}


def calib(n=6, seqlen=16, vocab=256):
    return torch.randint(0, vocab, (n, seqlen))


def pruned_layers(model):
    path, blocks = find_blocks(model)
    return [v for i, b in enumerate(blocks) for v in select_layers(b, f"{path}.{i}")]


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prunes_every_layer_exactly(arch, method, pattern):
    model = BUILDERS[arch]()
    config = PruneConfig(method=method, sparsity=0.5 if pattern == "unstructured" else None, pattern=pattern, batch_size=4)
    report = sparsekit.prune(model, calib(), config)
    layers = pruned_layers(model)
    assert len(report.layers) == len(layers) > 0
    for view in layers:
        zeros = (view.weight == 0)
        if pattern == "2:4":
            assert zeros.reshape(view.out_features, -1, 4).sum(-1).ge(2).all(), view.name
        elif method in ("magnitude", "sparsegpt"):  # one threshold per matrix / column block
            assert zeros.sum() >= zeros.numel() // 2, view.name
        else:
            assert zeros.sum(1).ge(view.in_features // 2).all(), view.name
    assert report.sparsity == pytest.approx(0.5)
    assert torch.isfinite(model(calib()).logits).all()


def test_lm_head_and_embeddings_untouched():
    model = tiny_llama()
    head, emb = model.lm_head.weight.clone(), model.model.embed_tokens.weight.clone()
    sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.7))
    assert torch.equal(model.lm_head.weight, head)
    assert torch.equal(model.model.embed_tokens.weight, emb)


def test_batch_size_does_not_change_wanda_masks():
    a, b = tiny_llama(), tiny_llama()
    ids = calib(n=5)
    sparsekit.prune(a, ids, PruneConfig(method="wanda", sparsity=0.6, batch_size=1))
    sparsekit.prune(b, ids, PruneConfig(method="wanda", sparsity=0.6, batch_size=3))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa == 0, pb == 0), name


def test_sequential_inputs_are_the_pruned_outputs():
    """Block i's statistics must come from the already-pruned blocks before it (Wanda's scheme)."""
    model = tiny_llama(layers=2)
    ids = calib()
    seen = {}
    block1_q = model.model.layers[1].self_attn.q_proj
    handle = block1_q.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0].detach().clone()))
    sparsekit.prune(model, ids, PruneConfig(method="wanda", sparsity=0.5, batch_size=len(ids)))
    handle.remove()
    expected = {}
    h = block1_q.register_forward_hook(lambda m, a, o: expected.setdefault("x", a[0].detach().clone()))
    model(ids)
    h.remove()
    torch.testing.assert_close(seen["x"], expected["x"])


def test_per_layer_sparsity_mapping_and_targets():
    model = tiny_llama()
    sparsity = {"re:.*mlp.*": 0.25, "re:.*": 0.75}
    report = sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=sparsity, ignore=["re:.*lm_head", "re:.*v_proj"]))
    names = [r.name for r in report.layers]
    assert not any("v_proj" in n for n in names)
    for r in report.layers:
        assert r.reached == pytest.approx(0.25 if ".mlp." in r.name else 0.75, abs=1e-2), r.name
    assert torch.count_nonzero(model.model.layers[0].self_attn.v_proj.weight == 0) == 0


def test_report_has_phases_and_layer_seconds():
    report = sparsekit.prune(tiny_llama(), calib(), PruneConfig(method="sparsegpt", sparsity=0.5))
    assert {"capture", "statistics", "masks", "forward"} <= set(report.seconds)
    assert all(r.seconds >= 0 for r in report.layers)
    text = report.table()
    assert "q_proj" in text and "total" in text


def test_prune_on_device_moves_blocks_back():
    model = tiny_llama()
    sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.5, device="cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_forward_patches_are_removed():
    model = tiny_llama()
    sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.5))
    assert all("forward" not in b.__dict__ for b in model.model.layers)


# ---- bad input -------------------------------------------------------------------------------

class NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)


def test_model_without_block_list():
    with pytest.raises(ValueError, match="block list"):
        sparsekit.prune(NoBlocks(), calib(), PruneConfig())
    with pytest.raises(ValueError, match="no submodule"):
        find_blocks(tiny_llama(), "model.blocks")


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="obs"), "unknown pruning method"),
    (dict(pattern="2-4"), "unknown sparsity pattern"),
    (dict(pattern="4:4"), "n < m"),
    (dict(sparsity=1.2), r"\[0, 1\)"),
    (dict(sparsity=0.7, pattern="2:4"), "contradicts"),
    (dict(method="sparsegpt", method_options={"damping": 0.1}), "no option"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparsekit.prune(tiny_llama(), calib(), PruneConfig(**kwargs))


def test_nm_that_does_not_divide_in_features():
    model = tiny_llama(hidden=60, intermediate=120, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=None, pattern="4:8"))


def test_nan_activations_name_the_layer():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj"):
        sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.5))


@pytest.mark.parametrize("ids, match", [
    (torch.randint(0, 9, (4,)), "nsamples, seqlen"),
    (torch.rand(2, 8), "LongTensor"),
    (torch.zeros(0, 8, dtype=torch.long), "at least 1"),
])
def test_bad_calibration(ids, match):
    with pytest.raises(ValueError, match=match):
        sparsekit.prune(tiny_llama(), ids, PruneConfig())


def test_missing_layer_in_sparsity_mapping():
    with pytest.raises(ValueError, match="no sparsity given"):
        sparsekit.prune(tiny_llama(), calib(), PruneConfig(sparsity={"re:.*mlp.*": 0.5}))


@pytest.mark.parametrize("pattern, sparsity, expected", [
    ("unstructured", None, 0.5), ("unstructured", 0.3, 0.3), ("2:4", None, 0.5), ("1:4", None, 0.25), ("1:4", 0.25, 0.25),
])
def test_sparsity_defaults_to_half_or_the_pattern(pattern, sparsity, expected):
    config = PruneConfig(pattern=pattern, sparsity=sparsity)
    assert config.target_sparsity == pytest.approx(expected)
    assert config.layer_sparsity("model.layers.0.mlp.up_proj") == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, save_format, match", [
    (dict(pattern="4:8"), "sparsekit", "needs --pattern 2:4"),
    (dict(), "sparse-24-bitmask", "needs --pattern 2:4"),
    (dict(pattern="2:4", offload="disk", checkpoint_dir="run"), "sparsekit", "saves dense checkpoints"),
])
def test_save_format_must_fit_the_run(kwargs, save_format, match):
    config = PruneConfig(**kwargs)
    config.check_save_format("dense")
    with pytest.raises(ValueError, match=match):
        config.check_save_format(save_format)


def test_disk_offload_needs_a_checkpoint_dir_before_any_model():
    with pytest.raises(ValueError, match="checkpoint_dir"):
        PruneConfig(offload="disk")
    assert PruneConfig(offload="disk", checkpoint_dir="run").offload == "disk"
