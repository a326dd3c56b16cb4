"""sparsekit.save(model, dir, tokenizer, format=...): each format writes what its older name wrote (same bytes)
and loads back to the same model; the older names save_pruned / save_pretrained still work."""
import copy
import hashlib
from pathlib import Path

import pytest
import torch

import sparsekit
from sparsekit.hf.compressed import from_pretrained
from sparsekit.hf.compressed import save_pretrained as save_compressed
from sparsekit.hf.saving import report_metadata
from sparsekit.pruning import PruneConfig
from tests.helpers import byte_tokenizer, tiny_gpt2, tiny_llama


def files(directory) -> dict[str, str]:
    return {str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(directory).rglob("*")) if f.is_file()}


@pytest.fixture(params=[tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def pruned(request):
    model = request.param(layers=2)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = sparsekit.prune(model, ids, PruneConfig(method="wanda", sparsity=None, pattern="2:4", batch_size=4))
    return model, report


def test_dense_is_save_pruneds_checkpoint(pruned, tmp_path):
    model, report = pruned
    sparsekit.save_pruned(model, byte_tokenizer(), tmp_path / "old", report, extra={"run": 1})
    out = sparsekit.save(model, tmp_path / "new", byte_tokenizer(), metadata=report_metadata(report, {"run": 1}))
    assert out == (tmp_path / "new").resolve() and files(tmp_path / "old") == files(tmp_path / "new")
    loaded, _ = sparsekit.load_model(str(out), dtype="float32")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("fmt", ["sparsekit", "sparse-24-bitmask", "dense"])
def test_compressed_formats_are_save_pretraineds_checkpoint(pruned, tmp_path, fmt):
    model, _ = pruned
    sparse = copy.deepcopy(model)
    sparsekit.sparsify(sparse)
    save_compressed(sparse, tmp_path / "old", byte_tokenizer(), format=fmt, extra={"p": 2})
    sparsekit.save(sparse, tmp_path / "new", byte_tokenizer(), format=fmt, metadata={"p": 2})
    assert files(tmp_path / "old") == files(tmp_path / "new")
    sparsekit.save_pretrained(sparse, tmp_path / "alias", byte_tokenizer(), format=fmt, extra={"p": 2})
    assert files(tmp_path / "alias") == files(tmp_path / "new")
    if fmt != "dense":
        x = torch.randint(0, 256, (2, 9))
        with torch.no_grad():
            torch.testing.assert_close(from_pretrained(tmp_path / "new")(x).logits, sparse(x).logits)


def test_bad_format_and_old_refusals(pruned, tmp_path):
    model, _ = pruned
    with pytest.raises(ValueError, match="unknown checkpoint format 'gguf'"):
        sparsekit.save(model, tmp_path / "x", format="gguf")
    with pytest.raises(ValueError, match="no SparseLinear24 layers"):
        sparsekit.save(model, tmp_path / "x", format="sparsekit")
    sparse = copy.deepcopy(model)
    sparsekit.sparsify(sparse)
    with pytest.raises(ValueError, match=r"sparsekit\.save\(model, dir, tokenizer, format=.sparsekit.\)"):  # the old name keeps refusing a sparsified model
        sparsekit.save_pruned(sparse, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()
