"""Model rewrite (sparsify), compressed checkpoints (save_pretrained / from_pretrained) and the CLI, on tiny models."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import sparsekit
from sparsekit.hf.sizes import size_summary
from sparsekit.nn import SparseLinear24
from tests.helpers import byte_tokenizer, tiny_gpt2, tiny_llama

PROMPT = torch.tensor([[5, 17, 99, 3, 42, 200, 7, 64]])


def prune_24(model):
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", pattern="2:4", sparsity=None))
    return model


def tied_llama(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval().to(dtype)


@pytest.fixture(scope="module")
def pruned_llama():
    return prune_24(tiny_llama(hidden=128, intermediate=256))


@pytest.fixture(scope="module")
def pruned_tied_bf16():
    model = prune_24(tied_llama())
    # cast the weights only: rotary tables stay fp32, as from_pretrained(dtype=bf16) builds them
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            param.data = param.data.to(torch.bfloat16)
    return model


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(ids).logits


def greedy(model, n=12):
    return model.generate(PROMPT, max_new_tokens=n, do_sample=False, pad_token_id=0)


def bit_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.is_floating_point() else torch.equal(a, b)


# ---------------------------------------------------------------- sparsify


def test_sparsify_gives_same_logits_and_generation(pruned_llama):
    dense = pruned_llama
    model = copy.deepcopy(dense)
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == 14 and not report.skipped  # 7 linears x 2 blocks; lm_head ignored
    assert isinstance(model.model.layers[1].mlp.down_proj, SparseLinear24)
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert report.ratio == pytest.approx(2.125 / 4)  # fp32 values: 0.5 x 4 B + 1/8 B meta per element
    assert torch.equal(logits(model), logits(dense))
    assert torch.equal(greedy(model), greedy(dense))
    assert "layers swapped to SparseLinear24: 14" in report.table()


def test_sparsify_bf16_memory_ratio_and_generation(pruned_tied_bf16):
    model = copy.deepcopy(pruned_tied_bf16)
    report = sparsekit.sparsify(model)
    assert report.ratio == 0.5625
    sizes = size_summary(model)
    assert sizes["ratio"] == 0.5625 and sizes["compressed_bytes"] == report.compressed_bytes
    assert torch.equal(logits(model), logits(pruned_tied_bf16))
    assert torch.equal(greedy(model), greedy(pruned_tied_bf16))


def test_sparsify_is_idempotent_and_to_dense_restores(pruned_llama):
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    again = sparsekit.sparsify(model)
    assert again.swapped == [] and again.skipped == {}
    sparsekit.to_dense(model)
    assert not any(isinstance(m, SparseLinear24) for m in model.modules())
    for (name, p), q in zip(model.named_parameters(), pruned_llama.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(logits(model), logits(pruned_llama))


def test_targets_and_ignore(pruned_llama):
    model = copy.deepcopy(pruned_llama)
    report = sparsekit.sparsify(model, ignore=["re:.*lm_head", "re:.*mlp.*"])
    assert len(report.swapped) == 8 and all("self_attn" in n for n in report.swapped)
    model = copy.deepcopy(pruned_llama)
    report = sparsekit.sparsify(model, targets=["re:.*down_proj"])
    assert report.swapped == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_refuses_layers_that_are_not_24_and_swaps_nothing():
    model = tiny_llama(hidden=128, intermediate=256)  # dense: nothing is 2:4
    with pytest.raises(ValueError, match=r"(?s)14 targeted layer\(s\).*'model.layers.0.self_attn.q_proj' weight is not 2:4"):
        sparsekit.sparsify(model)
    assert not any(isinstance(m, SparseLinear24) for m in model.modules())
    with pytest.raises(ValueError, match="… and 6 more"):
        sparsekit.sparsify(model)


def test_skip_invalid_is_explicit(pruned_llama):
    model = copy.deepcopy(pruned_llama)
    model.model.layers[0].mlp.up_proj.weight.data.normal_()  # un-prune one layer
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj"):
        sparsekit.sparsify(model)
    report = sparsekit.sparsify(model, skip_invalid=True)
    assert list(report.skipped) == ["model.layers.0.mlp.up_proj"] and len(report.swapped) == 13
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)


def test_refuses_shapes_off_the_grid_and_lm_head_when_targeted():
    model = prune_24(tiny_llama())  # hidden 64, intermediate 128: every block layer fits; lm_head is dense
    odd = prune_24(tiny_llama(hidden=96, intermediate=192, heads=4, kv_heads=2))  # K=96 is not a multiple of 64
    with pytest.raises(ValueError, match=r"in_features K=96 is not a multiple of 64 \(pad 32 zero columns\)"):
        sparsekit.sparsify(odd)
    with pytest.raises(ValueError, match="'lm_head' weight is not 2:4"):
        sparsekit.sparsify(model, ignore=[])


def test_refuses_tied_weight():
    model = tied_llama()
    weight = model.model.embed_tokens.weight.data
    groups = weight.view(256, 32, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True)
    weight.mul_(keep.view(256, 128))
    with pytest.raises(ValueError, match="'lm_head' weight is tied to model.embed_tokens.weight"):
        sparsekit.sparsify(model, targets=["re:lm_head"], ignore=[])


def test_gpt2_conv1d_layers(tmp_path):
    model = prune_24(tiny_gpt2())
    dense = copy.deepcopy(model)
    report = sparsekit.sparsify(model)
    assert len(report.swapped) == 8
    # Conv1D runs addmm(x, W_in_out) and we run linear(x, W): same math, different summation order
    torch.testing.assert_close(logits(model), logits(dense), atol=1e-5, rtol=1e-5)
    sparsekit.save_pretrained(model, tmp_path / "ck")
    loaded = sparsekit.from_pretrained(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(model))
    sparsekit.save_pretrained(model, tmp_path / "dense", format="dense")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "dense")), logits(dense))
    sparsekit.save_pretrained(model, tmp_path / "bitmask", format="sparse-24-bitmask")  # Conv1D layers stay dense there
    assert torch.equal(logits(sparsekit.from_pretrained(tmp_path / "bitmask")), logits(dense))


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("fmt", ["sparsekit", "sparse-24-bitmask"])
def test_save_load_round_trip_is_bit_exact(pruned_tied_bf16, tmp_path, fmt):
    model = copy.deepcopy(pruned_tied_bf16)
    sparsekit.sparsify(model)
    out = tmp_path / "ck"
    sparsekit.save_pretrained(model, out, byte_tokenizer(), format=fmt)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away
    loaded = sparsekit.from_pretrained(out)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(bit_equal(a[k], b[k]) for k in a)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tie restored
    assert torch.equal(logits(loaded), logits(model))
    assert torch.equal(greedy(loaded), greedy(pruned_tied_bf16))
    sizes = size_summary(loaded, out)
    if fmt == "sparsekit":
        assert sizes["disk_ratio"] == 0.5625  # values + meta
    else:
        assert sizes["disk_ratio"] == pytest.approx(0.5625, abs=1e-3)  # compressed + bitmask + a 16-byte shape


def test_bitmask_export_metadata(pruned_llama, tmp_path):
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    sparsekit.save_pretrained(model, tmp_path / "ck", format="sparse-24-bitmask")
    qconfig = json.loads((tmp_path / "ck" / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors"
    sc = qconfig["sparsity_config"]
    assert sc["format"] == "sparse-24-bitmask" and sc["sparsity_structure"] == "2:4"
    assert sc["targets"] == ["Linear"] and sc["ignore"] == ["lm_head"]
    assert 0.3 < sc["global_sparsity"] < 0.5
    tensors = load_file(tmp_path / "ck" / "model.safetensors")
    name = "model.layers.0.mlp.gate_proj"
    assert tensors[f"{name}.bitmask"].dtype == torch.uint8 and tensors[f"{name}.bitmask"].shape == (256, 16)
    assert tensors[f"{name}.shape"].tolist() == [[256], [128]]
    weight = pruned_llama.get_submodule(name).weight.detach()
    mask = np.unpackbits(tensors[f"{name}.bitmask"].numpy(), axis=-1, bitorder="little").astype(bool)
    assert torch.equal(tensors[f"{name}.compressed"], weight[torch.from_numpy(mask)].view(256, 64))


def test_dense_export_loads_in_transformers(pruned_llama, tmp_path):
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    sparsekit.save_pretrained(model, tmp_path / "dense", byte_tokenizer(), format="dense")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert torch.equal(logits(hf), logits(pruned_llama))
    assert torch.equal(hf.model.layers[0].self_attn.o_proj.weight, pruned_llama.model.layers[0].self_attn.o_proj.weight)
    assert isinstance(model.model.layers[0].self_attn.o_proj, SparseLinear24)  # the model itself is untouched


def compressed_tensors_checkpoint(pruned, path, legacy_key=False, fmt="sparse-24-bitmask"):
    """A checkpoint as compressed-tensors writes it: top-2 |w| bitmask per group (or torch CUTLASS sparse-24)."""
    pruned.save_pretrained(path, safe_serialization=True)
    state = load_file(path / "model.safetensors")
    for name, module in pruned.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            w = state.pop(f"{name}.weight")
            if fmt == "sparse-24":
                packed, meta = sparse_semi_structured_from_dense_cutlass(w)
                state[f"{name}.weight.sparse_24_packed_weight"], state[f"{name}.weight.meta"] = packed, meta
                continue
            groups = w.view(w.shape[0], -1, 4)
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True).view(w.shape)
            state[f"{name}.compressed"] = w[mask].view(w.shape[0], -1)
            state[f"{name}.bitmask"] = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
            state[f"{name}.shape"] = torch.tensor(w.shape).reshape(-1, 1)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["compression_config" if legacy_key else "quantization_config"] = {
        "quant_method": "compressed-tensors", "version": "0.9.0", "format": "dense",
        "sparsity_config": {"format": fmt, "targets": ["Linear"], "ignore": ["lm_head"], "global_sparsity": 0.45,
                            "sparsity_structure": "2:4", "registry_requires_subclass": False}}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("legacy_key, fmt", [(False, "sparse-24-bitmask"), (True, "sparse-24-bitmask"), (False, "sparse-24")])
def test_loads_compressed_tensors_checkpoints(pruned_tied_bf16, tmp_path, legacy_key, fmt):
    compressed_tensors_checkpoint(pruned_tied_bf16, tmp_path, legacy_key, fmt)
    model = sparsekit.from_pretrained(tmp_path)
    assert isinstance(model.model.layers[0].mlp.up_proj, SparseLinear24)
    assert torch.equal(logits(model), logits(pruned_tied_bf16))
    byte_tokenizer().save_pretrained(tmp_path)
    routed, _ = sparsekit.load_model(str(tmp_path))
    assert isinstance(routed.model.layers[1].self_attn.q_proj, SparseLinear24)


def test_load_model_routes_compressed_checkpoints(pruned_llama, tmp_path):
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    sparsekit.save_pretrained(model, tmp_path / "ck", byte_tokenizer())
    loaded, tok = sparsekit.load_model(str(tmp_path / "ck"), dtype="bfloat16")
    assert isinstance(loaded.model.layers[0].mlp.up_proj, SparseLinear24)
    assert loaded.model.layers[0].mlp.up_proj.values.dtype == torch.bfloat16
    assert tok is not None


def test_checkpoint_refusals(pruned_llama, tmp_path):
    with pytest.raises(ValueError, match="no SparseLinear24 layers"):
        sparsekit.save_pretrained(copy.deepcopy(pruned_llama), tmp_path / "x")
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        sparsekit.save_pretrained(model, tmp_path / "x", format="gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        sparsekit.from_pretrained(tmp_path / "missing")
    pruned_llama.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="not a compressed 2:4 checkpoint.*sparsekit.sparsify"):
        sparsekit.from_pretrained(tmp_path / "dense")

    out = tmp_path / "ck"
    sparsekit.save_pretrained(model, out)
    state = load_file(out / "model.safetensors")
    save_file({**state, "model.layers.0.extra": torch.zeros(1)}, out / "model.safetensors")
    with pytest.raises(ValueError, match="does not have.*model.layers.0.extra"):
        sparsekit.from_pretrained(out)
    state.pop("model.norm.weight")
    save_file(state, out / "model.safetensors")
    with pytest.raises(ValueError, match="missing 1 tensor.*model.norm.weight"):
        sparsekit.from_pretrained(out)

    quantized = tmp_path / "quantized"
    compressed_tensors_checkpoint(copy.deepcopy(pruned_llama), quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"]}}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match="quantized compressed-tensors"):
        sparsekit.from_pretrained(quantized)


def test_overwrites_existing_checkpoint_atomically(pruned_llama, tmp_path):
    model = copy.deepcopy(pruned_llama)
    sparsekit.sparsify(model)
    out = tmp_path / "ck"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ValueError, match="not written by sparsekit"):  # a user directory needs overwrite=True
        sparsekit.save_pretrained(model, out)
    assert (out / "stale.txt").exists()
    sparsekit.save_pretrained(model, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "sparsekit.json").is_file()
    (out / "stale.txt").write_text("old")
    sparsekit.save_pretrained(model, out)  # a previous sparsekit output is replaced without it
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "sparsekit.json").read_text())["format"] == "sparse24"


# ---------------------------------------------------------------- CLI


def test_cli_sparsify(pruned_llama, tmp_path, capsys):
    from sparsekit.cli import main

    pruned_llama.save_pretrained(tmp_path / "pruned")
    byte_tokenizer().save_pretrained(tmp_path / "pruned")
    rc = main(["sparsify", "--model", str(tmp_path / "pruned"), "--out", str(tmp_path / "ck"), "--json", str(tmp_path / "s.json"),
               "--dtype", "checkpoint"])  # the stored float32: compared bit for bit below
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["sparse_layers"] == 14 and summary["disk_ratio"] == pytest.approx(2.125 / 4)
    assert "in memory, compressed" in capsys.readouterr().out
    assert torch.equal(logits(sparsekit.from_pretrained(tmp_path / "ck")), logits(pruned_llama))
    rc = main(["sparsify", "--model", str(tmp_path / "ck"), "--out", str(tmp_path / "bm"), "--format", "sparse-24-bitmask",
               "--dtype", "checkpoint"])
    assert rc == 0 and torch.equal(logits(sparsekit.from_pretrained(tmp_path / "bm")), logits(pruned_llama))

    dense = tiny_llama(hidden=128, intermediate=256)
    dense.save_pretrained(tmp_path / "dense")
    byte_tokenizer().save_pretrained(tmp_path / "dense")
    assert main(["sparsify", "--model", str(tmp_path / "dense"), "--out", str(tmp_path / "no")]) == 2
    assert "is not 2:4 sparse" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_cli_prune_save_format_needs_24(tmp_path, capsys):
    from sparsekit.cli import main

    rc = main(["prune", "--model", str(tmp_path), "--pattern", "4:8", "--save", str(tmp_path / "o"), "--save-format", "sparsekit"])
    assert rc == 2 and "needs --pattern 2:4" in capsys.readouterr().err


def test_cli_prune_saves_compressed(tmp_path, capsys):
    from sparsekit.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")  # hidden 64, intermediate 128: every block layer fits the layout
    (tmp_path / "calib.txt").write_text(" ".join(f"The river {i} flows past the old mill." for i in range(300)))
    rc = main(["prune", "--model", str(tmp_path / "model"), "--method", "wanda", "--pattern", "2:4", "--nsamples", "4",
               "--seqlen", "32", "--device", "cpu", "--calib", str(tmp_path / "calib.txt"), "--save", str(tmp_path / "out"),
               "--save-format", "sparsekit", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    compressed = json.loads((tmp_path / "s.json").read_text())["compressed"]
    assert compressed["sparse_layers"] == 14 and compressed["kept_dense"] == {}
    info = json.loads((tmp_path / "out" / "sparsekit.json").read_text())
    assert info["format"] == "sparse24" and info["pruning"]["method"] == "wanda"
    model, tok = sparsekit.load_model(str(tmp_path / "out"))
    assert isinstance(model.model.layers[0].mlp.down_proj, SparseLinear24) and tok is not None
    assert "in memory, compressed" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["sparse-24-bitmask", "sparse-24"])
def test_compressed_tensors_load_in_float32(pruned_tied_bf16, tmp_path, fmt):
    """A bf16 checkpoint read in float32 (what dtype=auto picks on a CPU without native bf16): the 16-bit
    CUTLASS packing is decompressed as stored, then cast."""
    compressed_tensors_checkpoint(pruned_tied_bf16, tmp_path, False, fmt)
    byte_tokenizer().save_pretrained(tmp_path)
    model, _ = sparsekit.load_model(str(tmp_path), dtype="float32")
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, SparseLinear24) and layer.values.dtype == torch.float32
    want = pruned_tied_bf16.model.layers[0].mlp.up_proj.weight.float()
    assert torch.equal(layer.dense_weight(), want)
