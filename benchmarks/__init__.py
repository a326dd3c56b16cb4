"""sparsekit's benchmark suite: kernels, end-to-end decode, pruning time, accuracy.

    python -m benchmarks kernels|decode|prune-time|accuracy|all [--quick]
    python -m benchmarks plot | tables --readme README.md | merge DIR

Every benchmark writes rows of one schema (`benchmarks.schema.BenchRow`) as JSON lines under
`benchmarks/results/<device-slug>/<benchmark>.jsonl` (`--quick` runs under `.../quick/`), so
plots and README tables are generated from what was measured, on which device, at which commit.
"""
