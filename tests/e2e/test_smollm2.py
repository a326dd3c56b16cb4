"""End to end on the real embedded model: SmolLM2-135M-Instruct (dequantized from its GGUF)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import sparsekit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return sparsekit.load_model("smollm2-135m", dtype="bfloat16")


def test_real_model_is_llama_with_30_blocks(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.decode(tok("The capital of France").input_ids) == "The capital of France"


def test_wanda_50_prunes_exactly_and_round_trips(smollm2, tmp_path):
    model, tok = smollm2
    evaluation = sparsekit.evaluation_text()
    dense = sparsekit.perplexity(model, tok, evaluation, seqlen=256, max_windows=4, progress=False)
    assert 5 < dense < 100
    calib = sparsekit.calibration_ids(tok, nsamples=4, seqlen=256)
    report = sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", sparsity=0.5))
    assert len(report.layers) == 30 * 7
    assert all(r.reached == 0.5 for r in report.layers)
    for r in report.layers:
        weight = model.get_submodule(r.name).weight
        assert (weight == 0).sum(1).ge(weight.shape[1] // 2).all(), r.name
    pruned = sparsekit.perplexity(model, tok, evaluation, seqlen=256, max_windows=4, progress=False)
    assert dense < pruned < 50 * dense
    out = sparsekit.save_pruned(model, tok, tmp_path / "pruned", report)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    ids = calib[:1, :32]
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
