"""sparsekit: post-training pruning of LLMs (magnitude, Wanda, SparseGPT, DSnoT, BESA, OWL) with fused kernels.

    import sparsekit
    model, tok = sparsekit.load_model("smollm2-135m")
    calib = sparsekit.calibration_ids(tok, nsamples=32, seqlen=512)
    report = sparsekit.prune(model, calib, sparsekit.PruneConfig(method="wanda", sparsity=0.5))
    print(sparsekit.perplexity(model, tok, sparsekit.evaluation_text(), seqlen=512))

The functional ops (masks, scores, SparseGPT, DSnoT, 2:4 kernels) live in `sparsekit.ops`.
"""
import importlib

from sparsekit._version import __version__  # noqa: F401  (in _version.py so that lower layers can read it)

_LAZY = {
    "PruneConfig": "sparsekit.pruning",
    "prune": "sparsekit.pruning",
    "load_model": "sparsekit.hf.loading",
    "save": "sparsekit.hf.saving",
    "save_pruned": "sparsekit.hf.saving",
    "calibration_ids": "sparsekit.data.text",
    "evaluation_text": "sparsekit.data.text",
    "perplexity": "sparsekit.eval.perplexity",
    "sparsify": "sparsekit.hf.sparsify",
    "to_dense": "sparsekit.hf.sparsify",
    "SparsifyReport": "sparsekit.hf.sparsify",
    "save_pretrained": "sparsekit.hf.saving",
    "from_pretrained": "sparsekit.hf.compressed",
}

__all__ = sorted(_LAZY) + ["ops", "nn"]


def __getattr__(name):
    if name in ("ops", "nn"):
        return importlib.import_module(f"sparsekit.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
