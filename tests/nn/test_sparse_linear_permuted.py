"""Channel-permuted 2:4 (issue #13 part 3): SparseLinear24's `perm`, `PruneConfig(permute=True)` and the
compressed checkpoint must give the dense-with-zeros model's outputs."""
import copy

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import ops
from sparsekit.hf.compressed import from_pretrained, save_pretrained
from sparsekit.nn import SparseLinear24
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR
from tests.helpers import tiny_gpt2, tiny_llama


def permuted_linear(out_features, in_features, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=g))
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=g))
    score = linear.weight.abs() * torch.exp(torch.randn(in_features, generator=g) * 1.5)
    perm = ops.nm_permutation(score, 2, 4)
    with torch.no_grad():
        linear.weight.mul_(ops.permuted_nm_mask(score, perm, 2, 4))
    return linear, perm


@pytest.mark.parametrize("out_features, in_features, bias", [(32, 64, True), (96, 128, False), (64, 192, True)])
def test_permuted_layer_equals_dense_with_zeros(out_features, in_features, bias):
    linear, perm = permuted_linear(out_features, in_features, seed=in_features, bias=bias)
    assert not torch.equal(perm, torch.arange(in_features))
    with pytest.raises(ValueError, match="2:4"):  # in its own order the weight is not 2:4
        SparseLinear24.from_linear(linear)
    sparse = SparseLinear24.from_linear(linear, perm=perm)
    x = torch.randn(3, 5, in_features)
    expected = linear(x)
    for _ in range(2):  # first call builds the plan, the second takes the fast path
        torch.testing.assert_close(sparse(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(sparse.dense_weight(), linear.weight)
    assert torch.equal(sparse.to_dense().weight, linear.weight)
    assert "input-permuted" in repr(sparse)


def test_state_dict_round_trip_and_bad_perm_rejected():
    linear, perm = permuted_linear(32, 64, seed=1)
    sparse = SparseLinear24.from_linear(linear, perm=perm)
    state = sparse.state_dict()
    assert torch.equal(state["perm"], perm)
    rebuilt = SparseLinear24(64, 32, dtype=torch.float32, permuted=True)
    rebuilt.load_state_dict(state)
    x = torch.randn(7, 64)
    torch.testing.assert_close(rebuilt(x), linear(x), rtol=1e-5, atol=1e-5)
    bad = dict(state, perm=torch.zeros(64, dtype=torch.int64))
    with pytest.raises(ValueError, match="not a permutation"):
        SparseLinear24(64, 32, dtype=torch.float32, permuted=True).load_state_dict(bad)
    rebuilt.perm = perm.int()  # assigned buffers are checked on the next call
    with pytest.raises(ValueError, match="perm must be"):
        rebuilt(x)
    with pytest.raises(ValueError, match="not a permutation"):
        SparseLinear24.from_linear(linear, perm=torch.arange(64).flip(0).clamp(max=62))


def prune_permuted(model, method="wanda"):
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    sparsekit.prune(model, calib, sparsekit.PruneConfig(method=method, pattern="2:4", sparsity=None, permute=True))
    return model


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_permuted_model_through_sparsify_save_and_load(tmp_path, method):
    dense = prune_permuted(tiny_llama(hidden=128, intermediate=256), method)
    block = dense.model.layers[0]
    perms = {name: getattr(m, INPUT_PERMUTATION_ATTR) for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    assert len(perms) == 7
    # one permutation per input: q/k/v share one, gate/up another
    attn, mlp = "self_attn.", "mlp."
    assert torch.equal(perms[attn + "q_proj"], perms[attn + "k_proj"]) and torch.equal(perms[attn + "q_proj"], perms[attn + "v_proj"])
    assert torch.equal(perms[mlp + "gate_proj"], perms[mlp + "up_proj"])
    assert not torch.equal(perms[attn + "q_proj"], torch.arange(128))
    with pytest.raises(ValueError):  # the weights are 2:4 only along their permutation
        sparsekit.sparsify(copy.deepcopy(dense).apply(lambda m: m.__dict__.pop(INPUT_PERMUTATION_ATTR, None)))

    ids = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])
    with torch.no_grad():
        expected = dense(ids).logits
    model = copy.deepcopy(dense)
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == 14 and not report.skipped
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    save_pretrained(model, tmp_path / "sk")
    loaded = from_pretrained(tmp_path / "sk")
    assert loaded.model.layers[0].self_attn.q_proj.perm is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
    # compressed-tensors has no permutation: those layers are written dense, in the original order
    save_pretrained(model, tmp_path / "ct", format="sparse-24-bitmask")
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "ct")(ids).logits, expected, rtol=1e-5, atol=1e-5)
    save_pretrained(model, tmp_path / "dense", format="dense")
    from transformers import AutoModelForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(ids).logits, expected,
                                   rtol=1e-5, atol=1e-5)


def test_permute_keeps_more_score_than_plain_nm():
    """On the same calibration, each permuted group keeps at least the Wanda score plain 2:4 keeps."""
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    plain, permuted = tiny_llama(hidden=128, intermediate=256), tiny_llama(hidden=128, intermediate=256)
    sparsekit.prune(plain, calib, sparsekit.PruneConfig(method="magnitude", pattern="2:4", sparsity=None))
    prune_permuted(permuted, "magnitude")
    kept = lambda model: sum(m.weight.abs().sum() for m in model.model.layers.modules() if isinstance(m, nn.Linear))  # noqa: E731
    assert kept(permuted) > kept(plain)


def test_permute_refusals():
    with pytest.raises(ValueError, match="N:M"):
        sparsekit.PruneConfig(method="wanda", sparsity=0.5, permute=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        sparsekit.PruneConfig(method="wanda", pattern="2:4", sparsity=None, permute=True, checkpoint_dir="x")
    calib = torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="permute does not apply"):
        sparsekit.prune(tiny_llama(), calib, sparsekit.PruneConfig(method="besa", pattern="2:4", sparsity=None, permute=True))


def test_gpt2_conv1d_layers_permuted():
    dense = prune_permuted(tiny_gpt2(hidden=128))
    ids = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])
    with torch.no_grad():
        expected = dense(ids).logits
    model = copy.deepcopy(dense)
    sparsekit.sparsify(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_cli_prune_permute_saves_compressed(tmp_path):
    import json

    from sparsekit.cli import main
    from sparsekit.hf.sparsify import to_dense
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"The river {i} flows past the old mill." for i in range(300)))
    rc = main(["prune", "--model", str(tmp_path / "model"), "--method", "wanda", "--pattern", "2:4", "--permute",
               "--nsamples", "4", "--seqlen", "32", "--device", "cpu", "--calib", str(tmp_path / "calib.txt"),
               "--save", str(tmp_path / "out"), "--save-format", "sparsekit", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["permute"] is True and summary["compressed"]["sparse_layers"] == 14
    model, _ = sparsekit.load_model(str(tmp_path / "out"))
    mlp = model.model.layers[1].mlp
    layer = mlp.down_proj  # its permutation was absorbed into gate/up's rows, and the checkpoint keeps that
    assert isinstance(layer, SparseLinear24) and layer.perm is None
    assert not torch.equal(layer.in_order, torch.arange(layer.in_features))
    assert torch.equal(mlp.gate_proj.out_order, layer.in_order) and torch.equal(mlp.up_proj.out_order, layer.in_order)
    assert mlp.gate_proj.perm is not None
    ids = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])
    with torch.no_grad():
        sparse_logits = model(ids).logits
        dense_logits = to_dense(model)(ids).logits  # weights with zeros, in the original order
    torch.testing.assert_close(sparse_logits, dense_logits, rtol=1e-5, atol=1e-5)
