"""Accuracy evaluation: perplexity (and zero-shot tasks)."""
from sparsekit.eval.perplexity import perplexity

__all__ = ["perplexity"]
