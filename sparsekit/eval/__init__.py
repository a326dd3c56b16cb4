"""Accuracy evaluation: perplexity and zero-shot tasks."""
from sparsekit.eval.perplexity import perplexity
from sparsekit.eval.zeroshot import zeroshot, zeroshot_lm_eval

__all__ = ["perplexity", "zeroshot", "zeroshot_lm_eval"]
