"""Bad input fails with exit code 2 and a message naming the fix, before the model is loaded where knowable."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparsekit
from sparsekit.cli import main
from tests.helpers import byte_tokenizer, save_tiny_checkpoint, tiny_llama
from tests.reliability.conftest import prune_args


def fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("extra, needles", [
    (["--targets", "re:.*nothing.*"], ["select no layer", "model.layers.0.self_attn.q_proj (Linear)"]),
    (["--ignore", "re:.*"], ["select no layer"]),
    (["--targets", "re:("], ["not a valid regular expression"]),
    (["--sparsity", '{"re:(": 0.5}'], ["not a valid regular expression"]),
    (["--pattern", "2:5"], ["divisible by 5", "model.layers.0.self_attn.q_proj (64 inputs)"]),
    (["--seqlen", "0"], ["--seqlen must be at least 2"]),
    (["--seqlen", "100000"], ["exceeds the model's 512 positions", "--seqlen 512"]),
    (["--eval", "--eval-seqlen", "4096"], ["exceeds the model's 512 positions"]),
    (["--eval-windows", "-1"], ["--eval-windows must be a positive integer"]),
    (["--nsamples", "0"], ["--nsamples must be a positive integer"]),
    (["--method", "dsnot", "--dsnot-mode", "banana"], ["unknown DSnoT mode"]),
])
def test_prune_input_errors_come_before_the_model_load(workspace, no_model_load, capsys, extra, needles):
    fails(capsys, prune_args(workspace, *extra), *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["prune", "eval"])
def test_cuda_without_cuda(workspace, no_model_load, capsys, command):
    argv = prune_args(workspace) if command == "prune" else ["eval", "--model", str(workspace / "model"), "--device", "cpu"]
    argv[argv.index("--device") + 1] = "cuda"
    fails(capsys, argv, "no usable CUDA GPU", "--device cpu")


def test_calibration_sources(workspace, no_model_load, capsys):
    (workspace / "dir").mkdir()
    args = prune_args(workspace)
    at = args.index("--calib") + 1
    args[at] = str(workspace / "dir")
    fails(capsys, args, "is a directory")
    (workspace / "c.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    args[at] = str(workspace / "c.jsonl")
    fails(capsys, args, "line 2 has no string \"text\" field")
    (workspace / "c.jsonl").write_text("{not json\n")
    fails(capsys, args, "line 1 is not valid JSON")


def test_hf_source_without_datasets(workspace, no_model_load, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    args = prune_args(workspace)
    args[args.index("--calib") + 1] = "hf:wikitext:train"
    fails(capsys, args, "pip install datasets")


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach a model hub fails the test."""
    import huggingface_hub
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a hub was contacted")

    for owner, name in [(transformers.AutoTokenizer, "from_pretrained"), (transformers.AutoConfig, "from_pretrained"),
                        (huggingface_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download")]:
        monkeypatch.setattr(owner, name, refuse)


@pytest.mark.parametrize("model", ["./no-such-model", "/no/such/model", "typo-name", "a/b/c"])
def test_missing_model_path_says_so_without_a_hub(workspace, capsys, no_hub, model):
    args = prune_args(workspace)
    args[args.index("--model") + 1] = model
    fails(capsys, args, "does not exist")


def test_hub_ids_are_not_requested_when_offline(workspace, capsys, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = prune_args(workspace)
    args[args.index("--model") + 1] = "someorg/some-model"
    fails(capsys, args, "HF_HUB_OFFLINE")


def test_missing_tensors_are_refused_unless_allowed(workspace, capsys):
    weights = workspace / "model" / "model.safetensors"
    state = load_file(weights)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    fails(capsys, prune_args(workspace), "lacks 1 tensor", "model.layers.1.mlp.down_proj.weight", "--allow-missing")
    assert main(prune_args(workspace, "--allow-missing")) == 0


def test_truncated_safetensors(workspace, no_model_load, capsys):
    weights = workspace / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    fails(capsys, prune_args(workspace), "truncated", "re-download")


def test_encoders_are_refused_in_one_line(workspace, no_model_load, capsys):
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               vocab_size=256)).save_pretrained(workspace / "bert")
    T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                                        vocab_size=256)).save_pretrained(workspace / "t5")
    for name, kind in (("bert", "encoder-only"), ("t5", "encoder-decoder")):
        byte_tokenizer().save_pretrained(workspace / name)
        args = prune_args(workspace)
        args[args.index("--model") + 1] = str(workspace / name)
        err = fails(capsys, args, kind, "decoder-only causal language models")
        assert err.split("sparsekit: error:")[1].count("\n") == 1  # one line, not a list of classes


def test_eval_default_seqlen_fits_short_models(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "m", lambda: _gpt2_positions(64))
    (tmp_path / "t.txt").write_text(" ".join(f"word{i}" for i in range(3000)))
    assert main(["eval", "--model", str(tmp_path / "m"), "--device", "cpu", "--eval-text", str(tmp_path / "t.txt"),
                 "--eval-windows", "2", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["seqlen"] == 64


def _gpt2_positions(n):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=256, n_positions=n,
                                      bos_token_id=0, eos_token_id=0)).eval()


def test_nan_perplexity_is_a_failure(tmp_path, capsys):
    model = tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text(" ".join(f"word{i}" for i in range(3000)))
    fails(capsys, ["eval", "--model", str(tmp_path / "m"), "--device", "cpu", "--dtype", "float32", "--seqlen", "32",
                   "--eval-text", str(tmp_path / "t.txt"), "--eval-windows", "2"], "perplexity is not finite")


def test_library_prune_refuses_an_empty_selection_and_bad_widths():
    model = tiny_llama()
    ids = torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="select no layer"):
        sparsekit.prune(model, ids, sparsekit.PruneConfig(targets=["re:nothing"]))
    with pytest.raises(ValueError, match="divisible by 3"):
        sparsekit.prune(model, ids, sparsekit.PruneConfig(pattern="1:3", sparsity=None))


@pytest.fixture
def compressed_checkpoints(tmp_path):
    model = tiny_llama(hidden=128, intermediate=256)
    sparsekit.prune(model, torch.randint(0, 256, (2, 16)), sparsekit.PruneConfig(method="magnitude", sparsity=None, pattern="2:4"))
    sparsekit.sparsify(model)
    sparsekit.save_pretrained(model, tmp_path / "sk")
    sparsekit.save_pretrained(model, tmp_path / "bm", format="sparse-24-bitmask")
    return tmp_path


def _edit(directory, suffix, change):
    path = next(directory.glob("*.safetensors"))
    state = load_file(path)
    key = next(k for k in state if k.endswith(suffix))
    state[key] = change(state[key].clone())
    save_file(state, path, metadata={"format": "pt"})


def _move_bits(bitmask):  # same number of set bits per row, but 4 in the first group
    bitmask[0, 0], bitmask[0, 1] = 0xFF, 0x00
    return bitmask


def _set_first(t, value):
    t.view(-1)[0] = value
    return t


@pytest.mark.parametrize("fmt, suffix, change, message", [
    ("sk", ".meta", torch.zeros_like, "meta is corrupt"),
    ("sk", ".values", lambda t: _set_first(t, float("nan")), "NaN or infinite"),
    ("bm", ".compressed", lambda t: _set_first(t, float("inf")), "NaN or infinite"),
    ("bm", ".bitmask", lambda t: _move_bits(t), "more than 2 of 4"),
])
def test_damaged_compressed_checkpoints_are_refused_at_load(compressed_checkpoints, fmt, suffix, change, message):
    sparsekit.from_pretrained(compressed_checkpoints / fmt)  # intact: loads
    _edit(compressed_checkpoints / fmt, suffix, change)
    with pytest.raises(ValueError, match=message):
        sparsekit.from_pretrained(compressed_checkpoints / fmt)
