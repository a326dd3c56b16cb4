"""DSnoT (Zhang et al., arXiv 2310.08915): an initial mask (Wanda, magnitude or SparseGPT) refined by
training-free prune-and-grow swaps (`sparsekit.ops.dsnot`), with statistics from the same
calibration pass as Wanda's. The official script's flags are accepted as aliases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sparsekit import ops
from sparsekit.ops.dsnot import DEFAULT_MODE, MODES
from sparsekit.pruners.base import LayerResult, Pruner, option
from sparsekit.pruners.registry import make_pruner

INITIAL_METHODS = ("wanda", "magnitude", "sparsegpt")
# what the official code does when a flag is not given (lib/prune.py + main.py at 4c029df)
OFFICIAL_DEFAULTS = {"max_cycles": 50, "threshold": 0.1, "skip_layer": "mlp", "same_sign": False}
# the "error" and default "exact" modes: measured on SmolLM2 (see README, "DSnoT")
MODE_DEFAULTS = {
    "official": OFFICIAL_DEFAULTS,
    "error": {"max_cycles": 50, "threshold": 0.0, "skip_layer": "none", "same_sign": False},
    "exact": {"max_cycles": 50, "threshold": 0.0, "skip_layer": "none", "same_sign": False},
}


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def official_bool(text: str) -> bool:
    """argparse `type=bool`, as the official script parses --without_same_sign: every non-empty
    string is True, so `--without_same_sign False` still turns the same-sign rule off."""
    return bool(text)


@dataclass
class DSnoTPruner(Pruner):
    initial: str = option("wanda", f"initial mask: one of {INITIAL_METHODS} (default wanda, as the official code; "
                                   "sparsegpt is better still with ample calibration, see README)",
                          aliases=("--initial_method",))
    mode: str = option(DEFAULT_MODE, f"one of {MODES}: 'official' reproduces zyxxmu/DSnoT; 'error' takes a swap only if "
                                     "it lowers the expected squared output error from mean/variance statistics; 'exact' "
                                     "(default) picks swaps by the exact change of the layer's reconstruction error with "
                                     "the input Hessian (see sparsekit.ops.dsnot)")
    max_cycles: int | None = option(None, "swaps per row at most (default 50)", aliases=("--max_cycle_time",), parse=int)
    threshold: float | None = option(None, "official mode: a row stops once |eps| <= threshold (default 0.1, absolute "
                                           "units of W * sum of x)", aliases=("--update_threshold",), parse=float)
    var_power: float = option(1.0, "grow candidates ranked by W * mean / var**var_power (default 1)",
                              aliases=("--pow_of_var_regrowing",))
    skip_layer: str | None = option(None, "layers keeping their initial mask: a block-relative name's first part "
                                          "('mlp', 'self_attn'), 're:<regex>' on it, or 'none' (default: 'mlp' in "
                                          "official mode as the official code, 'none' otherwise)", aliases=("--skip_layer",))
    skip_sub_layer: str | None = option(None, "also skip layers whose name's second part is this (e.g. 'down_proj')",
                                        aliases=("--skip_sub_layer",))
    same_sign: bool | None = option(None, "official mode, unstructured: stop a row before eps changes sign (default "
                                          "false; N:M always)", parse=parse_bool)
    without_same_sign: bool | None = option(None, "the official flag: any non-empty value (even 'False', as argparse "
                                                  "type=bool) turns the same-sign rule off",
                                            aliases=("--without_same_sign",), parse=official_bool)

    needs_activations = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown DSnoT mode {self.mode!r}; choose one of {MODES}")
        defaults = MODE_DEFAULTS[self.mode]
        if self.same_sign is not None and self.without_same_sign is not None and self.same_sign == self.without_same_sign:
            raise ValueError("same_sign and without_same_sign contradict each other; give one of them")
        if self.without_same_sign is not None:
            self.same_sign = not self.without_same_sign
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.initial = str(self.initial).lower()
        if self.initial not in INITIAL_METHODS:
            raise ValueError(f"unknown DSnoT initial method {self.initial!r}; choose one of {INITIAL_METHODS}")
        if self.skip_layer.startswith("re:"):
            re.compile(self.skip_layer[3:])
        # magnitude per row, as the official DSnoT code
        self.initial_pruner = make_pruner(self.initial, **({"scope": "row"} if self.initial == "magnitude" else {}))
        if self.initial == "sparsegpt":
            self.initial_pruner.keep_pruned_values = True  # a regrown weight comes back with its OBS value
        self._relative_names: dict[int, str] = {}
        self._seqlen = None

    @property
    def needs_hessian(self) -> bool:
        return self.initial_pruner.needs_hessian or self.mode == "exact"

    def skipped(self, relative_name: str) -> bool:
        """Whether a layer (name relative to its block, e.g. 'mlp.up_proj') keeps its initial mask."""
        parts = relative_name.split(".")
        skip = self.skip_layer
        if skip.startswith("re:"):
            hit = re.fullmatch(skip[3:], parts[0]) is not None
        else:
            hit = skip.lower() not in ("none", "no_skip", "") and parts[0] == skip
        return hit or (self.skip_sub_layer is not None and len(parts) > 1 and parts[1] == self.skip_sub_layer)

    def prune_block(self, ctx):
        self._relative_names = {id(module): name for name, module in ctx.block.named_modules()}
        self._seqlen = int(ctx.inputs.hidden.shape[1])  # tokens per calibration sequence
        return super().prune_block(ctx)

    def prune_layer(self, layer, stats, target, backend):
        initial = self.initial_pruner.prune_layer(layer, stats, target, backend)
        if self.skipped(self._relative_names.get(id(layer.module), layer.name)):
            return initial
        return LayerResult(self.swap(layer, stats, target, initial, self._seqlen, backend), initial.weight)

    def swap(self, layer, stats, target, initial: LayerResult, seqlen: int | None, backend) -> torch.Tensor:
        """`initial.keep` refined by this pruner's DSnoT swaps (each row keeps its count; N:M groups theirs).

        A regrown weight takes its value in `initial.weight` (SparseGPT's OBS value when it was pruned), else the
        layer's. `seqlen`: tokens per calibration sequence (mode 'error').
        """
        weight = initial.weight if initial.weight is not None else layer.weight
        acts = stats.activations
        device = weight.device
        hessian = stats.hessian.hessian.to(device) if self.mode == "exact" else None
        return ops.dsnot(
            weight, initial.keep, acts.mean.to(device), acts.var.to(device), acts.sq_norm.to(device),
            max_cycles=self.max_cycles, threshold=self.threshold, var_power=self.var_power, same_sign=self.same_sign,
            n=target.n, m=target.m, mode=self.mode, seqlen=seqlen, hessian=hessian, reference=layer.weight,
            backend=backend,
        )
