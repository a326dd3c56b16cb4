"""Issue 13's second architecture on a tiny random Gemma 3 (gemma3_text): not LLaMA — GELU-tanh MLP, q/k norms,
sandwich norms, scaled embeddings, sliding-window and global layers with their own RoPE bases and masks, one KV
head, tied embeddings. Every method prunes it through the same pipeline, the masks reach the target sparsity,
the block-by-block pipeline sees what the full model computes, and the sparsified 2:4 model equals its
dense-with-zeros twin (with and without the input-channel permutation)."""
import copy

import pytest
import torch

import sparsekit
from sparsekit.nn import SparseLinear24

SEQLEN, SLIDING_WINDOW = 48, 8  # windows shorter than the sequence, so sliding and global layers differ
LINEARS_PER_BLOCK = 7  # q k v o gate up down
LAYERS = 3


def tiny_gemma3(seed=0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=256,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms and larger weights: far from identity, so pruning errors show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    return model


def calibration(n=8):
    return torch.randint(3, 256, (n, SEQLEN), generator=torch.Generator().manual_seed(1))


def linears(model):
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


def zeros(model) -> float:
    ws = [m.weight for m in linears(model).values()]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_the_tiny_model_is_the_architecture_under_test():
    model = tiny_gemma3()
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    assert len(linears(model)) == LAYERS * LINEARS_PER_BLOCK
    ids = calibration(1)
    # the sliding layers see a window: a token far back changes the global layer's output, so the model's
    # logits at the end depend on the first token even though two layers cannot see it
    other = ids.clone()
    other[0, 0] = (other[0, 0] + 1) % 256
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits[0, -1], model(other).logits[0, -1])


@pytest.mark.parametrize("batch_size", [3, 8])  # 3: a short last batch (8 = 3 + 3 + 2) records its own extras
def test_captured_block_inputs_reproduce_the_model(batch_size):
    """Running the blocks one after another on the captured inputs, each with the mask and rotary table the
    model gave it (sliding vs global), gives the model's own logits: what every pruner calibrates on is right."""
    from sparsekit.pipeline.capture import capture_inputs, forward_from_last_block

    model = tiny_gemma3()
    ids = calibration()
    blocks = model.model.layers
    captured = capture_inputs(model, blocks, ids, batch_size, "cpu")
    cos_sliding = captured.extras[batch_size][0][1]["position_embeddings"][0]
    cos_global = captured.extras[batch_size][1][1]["position_embeddings"][0]
    assert not torch.allclose(cos_sliding, cos_global)  # two RoPE bases
    outputs = []
    with torch.no_grad():
        for start, x in captured.batches():
            for index, block in enumerate(blocks):
                x = captured.call_block(block, index, x, "cpu")
            logits = forward_from_last_block(model, blocks, ids[start:start + x.shape[0]], x, captured.returns_tuple).logits
            outputs.append(logits)
        expected = model(ids).logits
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [
    dict(method="magnitude", sparsity=0.5),
    dict(method="wanda", sparsity=0.5),
    dict(method="sparsegpt", sparsity=0.6),
    dict(method="dsnot", sparsity=0.5),
    dict(method="alps", sparsity=0.6),
    dict(method="admm", sparsity=0.5),
    dict(method="sparsegpt", sparsity=0.6, method_options={"update": "alps"}),
    dict(method="wanda", sparsity=0.5, allocation="owl"),
    dict(method="besa", sparsity=0.5, method_options={"epochs": 1}),
], ids=lambda c: f"{c['method']}{'+' + c['allocation'] if 'allocation' in c else ''}"
                 f"{'+' + c['method_options'].get('update', '') if 'method_options' in c else ''}")
def test_every_method_prunes_gemma3_to_its_sparsity(config):
    model = tiny_gemma3()
    ids = calibration()
    with torch.no_grad():
        dense_logits = model(ids).logits
    sparsekit.prune(model, ids, sparsekit.PruneConfig(batch_size=4, **config))
    target = config["sparsity"]
    if config.get("allocation") or config["method"] == "besa":  # non-uniform over layers, same overall budget
        assert zeros(model) == pytest.approx(target, abs=0.02)
    else:
        for name, layer in linears(model).items():
            assert (layer.weight == 0).float().mean().item() == pytest.approx(target, abs=1 / layer.in_features), name
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, dense_logits)


def test_weight_updates_reconstruct_better_than_the_mask_alone():
    """SparseGPT (OBS update) and ALPS reproduce the dense block outputs better than magnitude at the same
    sparsity; a pipeline that fed the blocks wrong inputs (masks, rotary tables) would not show this."""
    ids = calibration()
    dense = tiny_gemma3()
    with torch.no_grad():
        reference = dense(ids).logits.float().log_softmax(-1)

    def error(**config):
        model = tiny_gemma3()
        sparsekit.prune(model, ids, sparsekit.PruneConfig(batch_size=4, sparsity=0.6, **config))
        with torch.no_grad():
            return (model(ids).logits.float().log_softmax(-1) - reference).pow(2).mean().item()

    magnitude, sparsegpt, alps = error(method="magnitude"), error(method="sparsegpt"), error(method="alps")
    assert sparsegpt < magnitude and alps < magnitude


@pytest.mark.parametrize("config", [
    dict(method="wanda"),
    dict(method="sparsegpt", method_options={"update": "alps"}),
    dict(method="wanda", permute=True),
], ids=["wanda", "sparsegpt+alps", "wanda+permute"])
def test_gemma3_24_sparsified_equals_its_dense_twin(config, tmp_path):
    model = tiny_gemma3()
    ids = calibration()
    sparsekit.prune(model, ids, sparsekit.PruneConfig(pattern="2:4", sparsity=None, batch_size=4, **config))
    for name, layer in linears(model).items():
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6), name
        if not config.get("permute"):  # with permute the groups run along the layer's permuted input channels
            groups = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1)
            assert (groups <= 2).all(), name
    twin = copy.deepcopy(model)
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == LAYERS * LINEARS_PER_BLOCK and not report.skipped
    assert sum(isinstance(m, SparseLinear24) for m in model.modules()) == LAYERS * LINEARS_PER_BLOCK
    with torch.no_grad():
        expected, got = twin(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    from tests.helpers import byte_tokenizer

    sparsekit.save_pretrained(model, tmp_path / "ck", byte_tokenizer())
    loaded = sparsekit.from_pretrained(tmp_path / "ck")
    assert type(loaded).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, got)

