"""permute=True (N:M channel permutation) for SparseGPT, ADMM, ALPS and DSnoT (issue #13 part 3).

These methods run on the permuted problem (W[:, p], H[p][:, p], statistics s[p]) and their mask and weights
are mapped back; the sparsified model (SparseLinear24 with perm) must give the dense-with-zeros outputs.
"""
import copy

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import ops
from sparsekit.hf.layers import LayerView
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR
from sparsekit.ops.stats import ActivationStats, HessianStats
from sparsekit.pipeline.block import LayerStats, LayerTarget
from sparsekit.pruners import make_pruner
from sparsekit.pruners.permuted import obs_saliency
from tests.helpers import tiny_llama

METHODS = [("sparsegpt", {}), ("alps", {"max_iter": 20}), ("admm", {"iters": 5, "iterative_prune": 3}),
           ("dsnot", {}), ("dsnot", {"initial": "sparsegpt"}), ("dsnot", {"mode": "official"})]


def layer_problem(out_features=32, in_features=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=g))
    x = torch.randn(4, 16, in_features, generator=g) * torch.exp(torch.randn(in_features, generator=g))
    stats = LayerStats(ActivationStats(in_features).update(x), HessianStats(in_features).update(x))
    return LayerView("layer", linear), stats


def is_nm_along(keep, perm, n=2, m=4):
    groups = keep[:, perm].reshape(keep.shape[0], -1, m)
    return bool(((m - groups.sum(-1)) == n).all())


@pytest.mark.parametrize("method,options", METHODS, ids=lambda v: str(v))
def test_identity_permutation_changes_nothing(method, options):
    layer, stats = layer_problem(seed=1)
    pruner = make_pruner(method, **options)
    target = LayerTarget(None, 2, 4)
    plain = pruner.prune_layer(layer, stats, target, None)
    permuted = pruner.prune_permuted(layer, stats, target, torch.arange(layer.in_features), None)
    assert torch.equal(permuted.keep, plain.keep)
    assert (permuted.weight is None) == (plain.weight is None)
    if plain.weight is not None:
        assert torch.equal(permuted.weight, plain.weight)


@pytest.mark.parametrize("method,options", METHODS, ids=lambda v: str(v))
def test_mask_is_nm_along_the_permutation_and_maps_back(method, options):
    layer, stats = layer_problem(seed=2)
    pruner = make_pruner(method, **options)
    perm = torch.randperm(layer.in_features, generator=torch.Generator().manual_seed(3))
    result = pruner.prune_permuted(layer, stats, LayerTarget(None, 2, 4), perm, None)
    assert torch.equal(result.perm, perm)
    assert is_nm_along(result.keep, perm) and not is_nm_along(result.keep, torch.arange(layer.in_features))
    if method == "sparsegpt":  # the definition, spelled out: SparseGPT on the permuted problem, columns put back
        h = stats.hessian.hessian
        weight, keep = ops.sparsegpt(layer.weight[:, perm], h[perm][:, perm], None, 2, 4)
        assert torch.equal(result.keep[:, perm], keep)
        assert torch.equal(result.weight[:, perm] * keep, weight * keep)


def test_saliency_is_sparsegpts_obs_error():
    layer, stats = layer_problem(seed=4)
    h = stats.hessian.hessian.double()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    expected = layer.weight.double() ** 2 / torch.linalg.inv(h).diagonal()
    torch.testing.assert_close(obs_saliency(layer.weight, stats.hessian.hessian, 0.01).double(), expected,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method,options", METHODS[:2] + METHODS[3:5], ids=lambda v: str(v))
def test_permuted_model_sparsifies_to_the_dense_with_zeros_outputs(method, options):
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    dense = tiny_llama(hidden=128, intermediate=256)
    sparsekit.prune(dense, calib, sparsekit.PruneConfig(method=method, pattern="2:4", sparsity=None, permute=True,
                                                        method_options=options))
    block = dense.model.layers[0]
    perms = {name: getattr(m, INPUT_PERMUTATION_ATTR, None) for name, m in block.named_modules()
             if isinstance(m, nn.Linear)}
    assert all(p is not None for p in perms.values()) and len(perms) == 7
    assert torch.equal(perms["self_attn.q_proj"], perms["self_attn.v_proj"])
    assert not torch.equal(perms["self_attn.q_proj"], torch.arange(128))
    ids = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])
    model = copy.deepcopy(dense)
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == 14 and not report.skipped
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_besa_still_refuses_permute():
    calib = torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="permute does not apply"):
        sparsekit.prune(tiny_llama(), calib, sparsekit.PruneConfig(method="besa", pattern="2:4", sparsity=None,
                                                                   permute=True))


def test_pruning_again_without_permute_drops_the_earlier_permutation():
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    model = tiny_llama(hidden=128, intermediate=256)
    sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", pattern="2:4", sparsity=None, permute=True))
    sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", pattern="2:4", sparsity=None))
    assert not any(hasattr(m, INPUT_PERMUTATION_ATTR) for m in model.modules())
    ids = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])
    sparsified = copy.deepcopy(model)
    sparsekit.sparsify(sparsified)
    with torch.no_grad():
        torch.testing.assert_close(sparsified(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_damping_of_zero_is_kept_for_the_permutation_score():
    from sparsekit.pruners.permuted import hessian_damping

    assert hessian_damping(make_pruner("alps", damp=0.0)) == 0.0
    assert hessian_damping(make_pruner("sparsegpt")) == 0.01
