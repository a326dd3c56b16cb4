"""Input permutations absorbed into the producing layers (issue #13 part 3): LLaMA's down_proj / GPT-2's c_proj
read their input already permuted (gate/up or c_fc rows permuted), found by structure (a probe), and the model
still computes what the pruned dense model computes; dense export un-permutes, checkpoints reload identically."""
import copy
import threading

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.hf.compressed import from_pretrained, save_pretrained
from sparsekit.hf.sparsify import sparse_layers, to_dense
from sparsekit.nn import SparseLinear24
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR
from tests.helpers import tiny_gpt2, tiny_llama
from tests.nn.test_sparse_linear_permuted import permuted_linear, prune_permuted

IDS = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64], [1, 2, 3, 4, 250, 6, 7, 8]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_llama_down_proj_permutation_moves_into_gate_and_up(tmp_path):
    dense = prune_permuted(tiny_llama(hidden=128, intermediate=256))
    expected = logits(dense)
    kept = sparsekit.sparsify(copy.deepcopy(dense), absorb_permutations=False)
    model = copy.deepcopy(dense)
    report = sparsekit.sparsify(model)
    assert report.absorbed == [f"model.layers.{i}.mlp.down_proj" for i in range(2)] and len(kept.absorbed) == 0
    assert "input permutations absorbed:     2" in report.table()
    for i, layer in enumerate(model.model.layers):
        mlp, attn = layer.mlp, layer.self_attn
        down_perm = getattr(dense.model.layers[i].mlp.down_proj, INPUT_PERMUTATION_ATTR)
        assert mlp.down_proj.perm is None and torch.equal(mlp.down_proj.in_order, down_perm)
        assert torch.equal(mlp.gate_proj.out_order, down_perm) and torch.equal(mlp.up_proj.out_order, down_perm)
        assert mlp.gate_proj.perm is not None and attn.q_proj.perm is not None  # they read the residual stream
        assert attn.o_proj.perm is not None and attn.o_proj.in_order is None  # attention is not elementwise
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    unabsorbed = copy.deepcopy(dense)
    sparsekit.sparsify(unabsorbed, absorb_permutations=False)
    # the same products and sums as gathering x in down_proj: bit for bit the model that keeps the permutation
    assert torch.equal(logits(model), logits(unabsorbed))

    # back to dense: every weight and bias in its original order, exactly the pruned dense model's
    back = to_dense(copy.deepcopy(model))
    for (name, param), (name_d, param_d) in zip(back.named_parameters(), dense.named_parameters()):
        assert name == name_d and torch.equal(param, param_d), name
    # checkpoints: sparsekit reloads bit for bit, dense and compressed-tensors write the original order
    save_pretrained(model, tmp_path / "sk")
    loaded = from_pretrained(tmp_path / "sk")
    assert torch.equal(loaded.model.layers[1].mlp.gate_proj.out_order, model.model.layers[1].mlp.gate_proj.out_order)
    assert torch.equal(logits(loaded), logits(model))
    save_pretrained(model, tmp_path / "dense", format="dense")
    from transformers import AutoModelForCausalLM

    reread = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert torch.equal(reread.model.layers[0].mlp.down_proj.weight, dense.model.layers[0].mlp.down_proj.weight)
    assert torch.equal(reread.model.layers[0].mlp.gate_proj.weight, dense.model.layers[0].mlp.gate_proj.weight)
    torch.testing.assert_close(logits(reread), expected, rtol=1e-5, atol=1e-5)
    save_pretrained(model, tmp_path / "ct", format="sparse-24-bitmask")
    torch.testing.assert_close(logits(from_pretrained(tmp_path / "ct")), expected, rtol=1e-5, atol=1e-5)


def test_gpt2_c_proj_permutation_moves_into_c_fc_with_its_bias():
    dense = prune_permuted(tiny_gpt2(hidden=128))
    with torch.no_grad():
        for block in dense.transformer.h:
            block.mlp.c_fc.bias.normal_()  # a bias that matters: it must be permuted with the rows
    expected = logits(dense)
    model = copy.deepcopy(dense)
    report = sparsekit.sparsify(model)
    assert report.absorbed == [f"transformer.h.{i}.mlp.c_proj" for i in range(2)]
    mlp = model.transformer.h[0].mlp
    assert mlp.c_fc.out_order is not None and mlp.c_proj.in_order is not None and mlp.c_proj.perm is None
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    back = to_dense(model)
    assert torch.equal(back.transformer.h[0].mlp.c_fc.bias, dense.transformer.h[0].mlp.c_fc.bias)
    assert torch.equal(back.transformer.h[0].mlp.c_fc.weight, dense.transformer.h[0].mlp.c_fc.weight)


class NotElementwise(nn.Module):
    """fc1 -> cumulative sum over features -> fc2: shaped like an MLP, but permuting fc1's rows changes fc2's input."""

    def __init__(self, linear_in, linear_out):
        super().__init__()
        self.fc1, self.fc2 = linear_in, linear_out

    def forward(self, x):
        return self.fc2(self.fc1(x).cumsum(-1))


def test_probe_keeps_the_permutation_when_the_intermediate_is_not_elementwise():
    fc2, perm = permuted_linear(64, 128, seed=3)
    fc1, perm1 = permuted_linear(128, 64, seed=4)
    setattr(fc1, INPUT_PERMUTATION_ATTR, perm1)
    setattr(fc2, INPUT_PERMUTATION_ATTR, perm)
    model = nn.Sequential(NotElementwise(fc1, fc2))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = model(x)
    report = sparsekit.sparsify(model, targets=["Linear"], ignore=[])
    assert report.absorbed == [] and len(report.swapped) == 2
    layers = sparse_layers(model)
    assert layers["0.fc2"].perm is not None and layers["0.fc1"].out_order is None
    with torch.no_grad():  # the cumulative sum adds up fc1's rounding (its sums are reordered by its gather)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-3)


class ScaledIntermediate(nn.Module):
    """down(silu(gate x) * up x * scale): a per-feature scale on the intermediate stays in the old order, so
    permuting gate/up's rows changes the function (by ~1%, which bf16/fp16 rounding alone would hide)."""

    def __init__(self, gate, up, down, scale):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down
        self.register_buffer("scale", scale)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x) * self.scale)


def permuted_mlp(hidden, intermediate, seed):
    gate, gate_perm = permuted_linear(intermediate, hidden, seed=seed)
    up, _ = permuted_linear(intermediate, hidden, seed=seed + 1)
    up.weight.data.mul_(gate.weight != 0)  # gate/up share one input permutation (their weights 2:4 along it)
    down, down_perm = permuted_linear(hidden, intermediate, seed=seed + 2)
    for layer, perm in ((gate, gate_perm), (up, gate_perm), (down, down_perm)):
        setattr(layer, INPUT_PERMUTATION_ATTR, perm)
    return gate, up, down


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_probe_keeps_the_permutation_when_the_intermediate_is_scaled_per_feature(dtype):
    gate, up, down = permuted_mlp(64, 128, seed=11)
    scale = 1 + 0.01 * torch.randn(128, generator=torch.Generator().manual_seed(12)).sign()
    dense = nn.Sequential(ScaledIntermediate(gate, up, down, scale)).to(dtype)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(13)).to(dtype)
    with torch.no_grad():
        expected = dense(x)
    model, kept = copy.deepcopy(dense), copy.deepcopy(dense)
    report = sparsekit.sparsify(model, targets=["Linear"], ignore=[])
    sparsekit.sparsify(kept, targets=["Linear"], ignore=[], absorb_permutations=False)
    assert report.absorbed == [] and len(report.swapped) == 3
    layers = sparse_layers(model)
    assert layers["0.down_proj"].perm is not None and layers["0.gate_proj"].out_order is None
    assert layers["0.up_proj"].out_order is None and layers["0.down_proj"].in_order is None
    with torch.no_grad():
        got = model(x)
        assert torch.equal(got, kept(x))  # exactly the model that gathers x in down_proj's kernel
    # the dense-with-zeros model, to the rounding of reordered sums in this dtype (a wrong absorption is ~1% off)
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=2e-3 * expected.abs().max().item())


class UnusedProducer(nn.Module):
    """fc_spare has the producer's shape but forward never calls it: permuting its rows proves nothing."""

    def __init__(self, fc1, fc_spare, fc2):
        super().__init__()
        self.fc1, self.fc_spare, self.fc2 = fc1, fc_spare, fc2

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_probe_keeps_the_permutation_when_a_producer_never_runs():
    fc1, perm1 = permuted_linear(128, 64, seed=21)
    fc_spare, perm_spare = permuted_linear(128, 64, seed=22)
    fc2, perm2 = permuted_linear(64, 128, seed=23)
    for layer, perm in ((fc1, perm1), (fc_spare, perm_spare), (fc2, perm2)):
        setattr(layer, INPUT_PERMUTATION_ATTR, perm)
    model = nn.Sequential(UnusedProducer(fc1, fc_spare, fc2))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = model(x)
    report = sparsekit.sparsify(model, targets=["Linear"], ignore=[])
    assert report.absorbed == [] and len(report.swapped) == 3
    layers = sparse_layers(model)
    assert layers["0.fc2"].perm is not None and layers["0.fc_spare"].out_order is None
    assert layers["0.fc1"].out_order is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-4)


class Uncopyable(UnusedProducer):
    """An MLP the probe cannot deepcopy (holds a lock); with `oom`, one whose probe forward runs out of memory."""

    def __init__(self, fc1, fc2, oom=False):
        super().__init__(fc1, nn.Identity(), fc2)
        self.lock, self.oom = (None if oom else threading.Lock()), oom

    def forward(self, x):
        if self.oom and not torch.is_grad_enabled():  # only the probe runs without grad here
            raise torch.OutOfMemoryError("probe ran out of memory")
        return super().forward(x)


def test_probe_skips_an_uncopyable_module_and_lets_out_of_memory_through():
    fc1, perm1 = permuted_linear(128, 64, seed=31)
    fc2, perm2 = permuted_linear(64, 128, seed=32)
    setattr(fc1, INPUT_PERMUTATION_ATTR, perm1)
    setattr(fc2, INPUT_PERMUTATION_ATTR, perm2)
    model = nn.Sequential(Uncopyable(copy.deepcopy(fc1), copy.deepcopy(fc2)))
    report = sparsekit.sparsify(model, targets=["Linear"], ignore=[])
    assert report.absorbed == [] and sparse_layers(model)["0.fc2"].perm is not None
    with pytest.raises(torch.OutOfMemoryError):
        sparsekit.sparsify(nn.Sequential(Uncopyable(fc1, fc2, oom=True)), targets=["Linear"], ignore=[])


def test_in_order_and_out_order_are_checked_on_load():
    linear, perm = permuted_linear(32, 64, seed=5)
    layer = SparseLinear24.from_linear(linear, in_order=perm, out_order=torch.randperm(32))
    state = layer.state_dict()
    rebuilt = SparseLinear24(64, 32, dtype=torch.float32, input_ordered=True, output_ordered=True)
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt.dense_weight(), linear.weight) and torch.equal(rebuilt.dense_bias(), linear.bias)
    bad = dict(state, out_order=torch.zeros(32, dtype=torch.int64))
    try:
        SparseLinear24(64, 32, dtype=torch.float32, input_ordered=True, output_ordered=True).load_state_dict(bad)
    except ValueError as exc:
        assert "out_order is not a permutation" in str(exc)
    else:
        raise AssertionError("a broken out_order was accepted")
