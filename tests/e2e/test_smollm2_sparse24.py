"""Issue 5's done-when on the real model: a 2:4-pruned SmolLM2-135M, sparsified, generates exactly what its
dense-with-zeros twin does, saves and reloads compressed bit for bit, at 0.5625x the linears' bytes."""
import copy

import pytest
import torch

import sparsekit
from sparsekit.hf.sizes import checkpoint_bytes, size_summary
from sparsekit.nn import SparseLinear24

pytestmark = pytest.mark.slow


def test_smollm2_24_sparsified_matches_dense_twin_and_round_trips(tmp_path, capsys):
    model, tok = sparsekit.load_model("smollm2-135m", dtype="bfloat16")
    calib = sparsekit.calibration_ids(tok, nsamples=16, seqlen=256, seed=0)
    sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", pattern="2:4", sparsity=None))
    twin = copy.deepcopy(model)

    report = sparsekit.sparsify(model)
    # hidden 576 = 9x64, kv 192 = 6x32, intermediate 1536 = 24x64: every q/k/v/o/gate/up/down fits N%32, K%64
    assert len(report.swapped) == 30 * 7 and not report.skipped
    assert report.ratio == 0.5625

    prompt = tok("The capital of France is", return_tensors="pt")
    greedy = dict(max_new_tokens=30, do_sample=False, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        expected = twin.generate(**prompt, **greedy)
        got = model.generate(**prompt, **greedy)
    assert torch.equal(got, expected), (tok.decode(got[0]), tok.decode(expected[0]))
    del twin

    sparsekit.save_pretrained(model, tmp_path / "ck", tok)
    sparsekit.save_pretrained(model, tmp_path / "dense", format="dense")
    loaded = sparsekit.from_pretrained(tmp_path / "ck")
    assert sum(isinstance(m, SparseLinear24) for m in loaded.modules()) == 210
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)
    with torch.no_grad():
        assert torch.equal(loaded(**prompt).logits, model(**prompt).logits)

    sizes = size_summary(loaded, tmp_path / "ck")
    assert sizes["ratio"] == 0.5625 and sizes["disk_ratio"] == 0.5625
    with capsys.disabled():
        print(f"\nSmolLM2-135M 2:4 sparsified: {tok.decode(got[0])!r}")
        print(f"linears in memory {sizes['compressed_bytes']:,} B vs dense {sizes['dense_bytes']:,} B ({sizes['ratio']:.4f}x); "
              f"on disk {sizes['disk_sparse_layer_bytes']:,} B ({sizes['disk_ratio']:.4f}x); checkpoint files "
              f"{checkpoint_bytes(tmp_path / 'ck'):,} B vs dense export {checkpoint_bytes(tmp_path / 'dense'):,} B")
