"""Loading and saving checkpoints."""
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import sparsekit
from sparsekit._io import OUTPUT_MARKER, atomic_dir, commit_dir
from sparsekit.hf.loading import load_model, parse_dtype
from tests.helpers import byte_tokenizer, save_tiny_checkpoint, tiny_gpt2


def test_byte_tokenizer_round_trip():
    tok = byte_tokenizer()
    ids = tok("héllo world").input_ids
    assert max(ids) < 256 and tok.decode(ids) == "héllo world"


@pytest.mark.parametrize("builder", [None, tiny_gpt2])
def test_save_pruned_round_trip(tmp_path, builder):
    save_tiny_checkpoint(tmp_path / "dense", builder)
    model, tok = load_model(str(tmp_path / "dense"))
    report = sparsekit.prune(model, torch.randint(0, 256, (4, 16)), sparsekit.PruneConfig(method="wanda", sparsity=0.5))
    out = sparsekit.save_pruned(model, tok, tmp_path / "pruned", report)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    meta = json.loads((out / "sparsekit.json").read_text())
    assert meta["method"] == "wanda" and meta["sparsity"] == pytest.approx(0.5)
    assert len(meta["layers"]) == len(report.layers)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_save_is_atomic_when_interrupted(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("previous complete checkpoint")
    (final / OUTPUT_MARKER).write_text("")

    class Boom(Exception):
        pass

    class Exploding(torch.nn.Module):
        def save_pretrained(self, path, **kwargs):
            (path / "half.safetensors").write_text("partial")
            raise Boom

    with pytest.raises(Boom):
        sparsekit.save_pruned(Exploding(), None, final)
    assert (final / "old.txt").exists() and not (final / "half.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_commit_dir_replaces(tmp_path):
    final = tmp_path / "x"
    for content in ("one", "two"):
        tmp = atomic_dir(final)
        (tmp / "f").write_text(content)
        commit_dir(tmp, final)
    assert (final / "f").read_text() == "two"
    assert os.listdir(tmp_path) == ["x"]


def test_load_model_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="GGUF"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float8")


def test_load_model_dtype(tmp_path):
    save_tiny_checkpoint(tmp_path / "m")
    model, _ = load_model(str(tmp_path / "m"), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training


def test_pickle_checkpoints_are_refused(tmp_path):
    model = save_tiny_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_model(str(tmp_path / "m"))


def test_save_pruned_refuses_sparsified_models(tmp_path):
    from sparsekit.nn import SparseLinear24

    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight.view(32, 16, 4)[..., :2] = 0
    model[0] = SparseLinear24.from_linear(model[0])
    with pytest.raises(ValueError, match=r"sparsekit\.save\(model, dir, tokenizer, format=.sparsekit.\)"):
        sparsekit.save_pruned(model, None, tmp_path / "x")
