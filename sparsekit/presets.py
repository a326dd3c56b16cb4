"""Recommended recipes (`--preset quality|fast`): a method, its options and an optional allocation per
pattern, chosen from the measured accuracy and pruning-time tables (SmolLM2-135M, README protocol;
docs/results.md). Explicit settings always win over the preset's.

- quality: the lowest measured perplexity, whatever it costs (ALPS: ADMM with an adaptive penalty chooses
  mask and weights together, then CG on the support; for N:M along RIA's input-channel permutation).
- fast: most of ALPS's gain within 3x SparseGPT's time: ADMM with the gradual mask (Boza; fixed penalty,
  one inverse, 20 iterations), more accurate than SparseGPT followed by ALPS's re-fit at similar cost.

A recipe is looked up by pattern kind ("unstructured" or "N:M") and, for unstructured, by the highest
`min_sparsity` not above the requested sparsity (so a recipe can change with the sparsity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from sparsekit.pruning import PruneConfig, parse_pattern


@dataclass(frozen=True)
class Recipe:
    method: str
    method_options: Mapping = field(default_factory=dict)
    allocation: str | None = None
    permute: bool = False
    min_sparsity: float = 0.0  # unstructured: used from this sparsity up (the highest one not above the target wins)
    cost: str = ""  # measured pruning time relative to SparseGPT's on the same machine, for the docs



UNSTRUCTURED, NM = "unstructured", "N:M"

# Costs: process CPU seconds of pruning one SmolLM2-135M block (layer 15 at 60%, 1 thread, AMD EPYC;
# `python -m benchmarks prune-time --smollm2-layers 15:16 ...`) against SparseGPT's 1.61 s.
PRESETS: dict[str, dict[str, tuple[Recipe, ...]]] = {
    "quality": {
        UNSTRUCTURED: (Recipe("alps", cost="6.3x SparseGPT (CPU s per block)"),),
        NM: (Recipe("alps", permute=True, cost="6.1x SparseGPT (CPU s per block)"),),  # 2:4: 69.91 vs 81.77 unpermuted
    },
    "fast": {
        UNSTRUCTURED: (Recipe("admm", cost="2.2x SparseGPT (CPU s per block)"),),
        NM: (Recipe("admm", cost="2.2x SparseGPT (CPU s per block)"),),
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_preset(name: str, pattern: str = "unstructured", sparsity: float | None = None) -> Recipe:
    """The recipe of preset `name` for `pattern` ("unstructured" or "N:M") at `sparsity` (unstructured)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {preset_names()}")
    _, m = parse_pattern(pattern)
    recipes = PRESETS[name][NM if m else UNSTRUCTURED]
    if m or sparsity is None or not isinstance(sparsity, (int, float)):
        return recipes[0]
    eligible = [r for r in recipes if r.min_sparsity <= sparsity] or [recipes[0]]
    return max(eligible, key=lambda r: r.min_sparsity)


def preset_config(name: str, *, sparsity=0.5, pattern: str = "unstructured", **overrides) -> PruneConfig:
    """A PruneConfig from preset `name`; any PruneConfig field in `overrides` wins over the preset
    (method_options are merged, the given ones winning, when the method stays the preset's)."""
    target = sparsity if not isinstance(sparsity, Mapping) else None
    recipe = resolve_preset(name, pattern, target)
    method = overrides.pop("method", recipe.method)
    options = dict(recipe.method_options) if method == recipe.method else {}
    options.update(overrides.pop("method_options", {}) or {})
    own = {"allocation": recipe.allocation, "permute": recipe.permute} if method == recipe.method else {}
    settings = {**own, **overrides}
    return PruneConfig(method=method, sparsity=sparsity, pattern=pattern, method_options=options, **settings)


def apply_to_cli_args(args) -> None:
    """Fill what `sparsekit prune --preset NAME` leaves unset (None) from the preset's recipe: --method,
    --update, --allocation, --permute, the method's own --<method>-<option> flags. Explicit flags (--no-permute
    too) stay as given."""
    sparsity = args.sparsity if isinstance(args.sparsity, (int, float)) else None
    recipe = resolve_preset(args.preset, args.pattern, 0.5 if sparsity is None else sparsity)
    if args.method is None:
        args.method = recipe.method
    if args.method != recipe.method:
        return  # another method: the preset's options are for its own method
    options = dict(recipe.method_options)
    if args.update is None and "update" in options:
        args.update = options.pop("update")
    options.pop("update", None)
    for key, value in options.items():
        dest = f"opt__{args.method}__{key}"
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    if args.allocation is None:
        args.allocation = recipe.allocation
    if args.permute is None:
        args.permute = recipe.permute
