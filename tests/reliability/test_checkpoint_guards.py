"""Run checkpoints: locked against a second run, fingerprinted by content and every result-changing option."""
import os

import pytest
import torch

import sparsekit
from sparsekit.hf.loading import load_model
from sparsekit.pipeline.checkpoint import model_files_digest, run_lock
from tests.helpers import save_tiny_checkpoint, tiny_llama


def ids():
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def first_run(tmp_path, monkeypatch):
    """A tiny checkpoint and a run directory holding a finished wanda 0.5 run of it."""
    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path / "cache"))
    save_tiny_checkpoint(tmp_path / "model")
    model, _ = load_model(str(tmp_path / "model"), dtype="float32")
    sparsekit.prune(model, ids(), sparsekit.PruneConfig(method="wanda", sparsity=0.5, checkpoint_dir=str(tmp_path / "run")))
    return tmp_path


def resume(ws, dtype="float32", **config):
    model, _ = load_model(str(ws / "model"), dtype=dtype)
    settings = {"method": "wanda", "sparsity": 0.5, "checkpoint_dir": str(ws / "run"), **config}
    return sparsekit.prune(model, ids(), sparsekit.PruneConfig(**settings))


def test_same_run_resumes(first_run):
    assert len(resume(first_run).layers) == 2 * 7


def test_replaced_weights_at_the_same_path_are_refused(first_run):
    save_tiny_checkpoint(first_run / "model", lambda: tiny_llama(seed=1))
    with pytest.raises(ValueError, match=r"different run \(model: checkpoint \"files:"):
        resume(first_run)


@pytest.mark.parametrize("change, field", [
    (dict(allocation="owl"), "allocation"),
    (dict(sparsity=0.6), "sparsity"),
    (dict(batch_size=3), "batch_size"),
    (dict(method="sparsegpt"), "method"),
])
def test_changed_settings_are_refused_naming_the_field(first_run, change, field):
    with pytest.raises(ValueError, match=rf"different run \({field}: checkpoint "):
        resume(first_run, **change)


def test_changed_dtype_is_refused_not_a_traceback(first_run):
    with pytest.raises(ValueError, match=r"different run \(dtype: checkpoint \"float32\", now \"bfloat16\""):
        resume(first_run, dtype="bfloat16")


def test_a_second_run_on_a_locked_checkpoint_dir_fails_clearly(first_run):
    with run_lock(first_run / "run"):  # another run holds it
        with pytest.raises(ValueError, match="in use by another sparsekit process"):
            resume(first_run)
    assert len(resume(first_run).layers) == 2 * 7  # free again afterwards


def test_file_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path / "cache"))
    save_tiny_checkpoint(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    first = model_files_digest(tmp_path / "model")
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_files_digest(tmp_path / "model") == first  # same size and mtime: the cached digest
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert model_files_digest(tmp_path / "model") != first  # touched: hashed again
