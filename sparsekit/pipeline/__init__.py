"""Block-by-block pruning of a decoder-only model."""
