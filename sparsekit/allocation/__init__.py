"""Sparsity allocation: how sparse each layer should be, decided before the pruning pass.

`PruneConfig(allocation="owl", allocation_options={"m": 5, "lam": 0.08})` turns one overall
sparsity into a per-layer mapping (OWL: from the dense model's outlier ratios) that the chosen
method then reaches layer by layer. (BESA learns its allocation inside each block: method "besa".)
Modules are imported lazily so that the pipeline and pruners can import this package freely.
The functions below take the run's `PruneConfig` (sparsekit.pruning) but never import it: the
config sits above this package and calls `check_allocation` itself (architecture.md §1 layers).
"""
from __future__ import annotations

import importlib

# name -> module exposing OPTIONS (dataclass of the allocation's options) and allocate(...)
ALLOCATIONS = {"owl": "sparsekit.allocation.owl"}


def _module(name: str):
    return importlib.import_module(ALLOCATIONS[name])


def options_class(name: str) -> type:
    """The dataclass of allocation `name`'s options (fields declared with sparsekit.options.option)."""
    return _module(name).OPTIONS


def check_allocation(config) -> None:
    """Validate config.allocation and config.allocation_options (PruneConfig calls this)."""
    if config.allocation is None:
        if config.allocation_options:
            raise ValueError(f"allocation_options {sorted(config.allocation_options)} given without an allocation; "
                             f"set allocation to one of {sorted(ALLOCATIONS)} (CLI: --allocation owl)")
        return
    if config.allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {config.allocation!r}; choose one of {sorted(ALLOCATIONS)} or None")
    if config.m:
        raise ValueError(f"allocation {config.allocation!r} sets a different unstructured sparsity per layer; it cannot "
                         f"be combined with the {config.pattern} pattern (every N:M row prunes exactly n/m): "
                         "use --pattern unstructured or drop --allocation")
    if not isinstance(config.sparsity, float):
        raise ValueError(f"allocation {config.allocation!r} distributes one overall sparsity (a number); "
                         "a per-layer sparsity mapping cannot be combined with it")
    if not isinstance(config.allocation_options, dict):
        raise ValueError("allocation_options must be a dict")
    _module(config.allocation).OPTIONS(**config.allocation_options)


def allocate_sparsity(config, blocks, block_path: str, inputs, device, placement):
    """Run the allocation's pass over the dense blocks; return a copy of `config` whose sparsity is
    the per-layer mapping {layer name: sparsity} (unchanged when config.allocation is None).

    `inputs` are the captured calibration inputs (left untouched); `placement.onload(i, block)` /
    `placement.offload(i, block)` bring each block to `device` and put it back (sparsekit.pipeline.placement).
    """
    if config.allocation is None:
        return config
    import dataclasses

    mapping = _module(config.allocation).allocate(config, blocks, block_path, inputs, device, placement)
    return dataclasses.replace(config, sparsity=mapping, allocation=None, allocation_options={})
