"""PruneConfig: everything a pruning run needs besides the model and the calibration tokens."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from sparsekit._validate import check_sparsity, parse_pattern
from sparsekit.allocation import check_allocation
from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS
from sparsekit.preflight import check_regexes


@dataclass
class PruneConfig:
    """
    method:      "magnitude" | "wanda" | "sparsegpt" | … (see sparsekit.pruners.PRUNERS)
    sparsity:    fraction pruned, or {layer name or "re:<regex>": fraction}; None with N:M = n/m
    pattern:     "unstructured" or "N:M" ("2:4", "4:8", …)
    targets / ignore: class names or "re:<regex>" over module names (llm-compressor style)
    method_options: the method's own options (e.g. {"blocksize": 128} for sparsegpt)
    batch_size:  calibration sequences per block forward
    device:      where blocks run (None: where the model is); blocks move there one at a time
    blocks:      dotted path of the block ModuleList when it cannot be found automatically
    offload:     "auto" | "none" | "cpu" | "disk": where blocks wait between their turns (see placement.py)
    max_gpu_memory: GPU memory budget in GiB (enforced as the process's CUDA memory fraction)
    checkpoint_dir: save each finished block here and resume from it (required for disk offload)
    allocation:  None (every layer at `sparsity`) or "owl": spread the overall sparsity over blocks
                 from a dense pass first (sparsekit.allocation; unstructured only)
    allocation_options: the allocation's options (owl: {"m": 5.0, "lam": 0.08})
    permute:     N:M only: choose each mask along an input-channel permutation (RIA's reallocation + LSA,
                 one per group of layers reading the same input); weights stay in their order, the 2:4
                 layers made by `sparsify` carry the permutation (sparsekit.ops.nm_permutation)
    """

    method: str = "wanda"
    sparsity: float | Mapping[str, float] | None = 0.5
    pattern: str = "unstructured"
    targets: Sequence[str] = DEFAULT_TARGETS
    ignore: Sequence[str] = DEFAULT_IGNORE
    method_options: dict = field(default_factory=dict)
    batch_size: int = 8
    device: str | None = None
    blocks: str | None = None
    backend: str | None = None
    offload: str = "auto"
    max_gpu_memory: float | None = None
    checkpoint_dir: str | None = None
    allocation: str | None = None
    allocation_options: dict = field(default_factory=dict)
    permute: bool = False

    def __post_init__(self):
        self.n, self.m = parse_pattern(self.pattern)
        if self.offload not in ("auto", "none", "cpu", "disk"):
            raise ValueError(f"offload must be auto, none, cpu or disk, got {self.offload!r}")
        if self.max_gpu_memory is not None and not self.max_gpu_memory > 0:
            raise ValueError(f"max_gpu_memory must be a positive number of GiB, got {self.max_gpu_memory}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_regexes(self.targets, "targets")
        check_regexes(self.ignore, "ignore")
        if isinstance(self.sparsity, Mapping):
            check_regexes(self.sparsity.keys(), "sparsity")
            for key, value in self.sparsity.items():
                check_sparsity(value)
        elif self.sparsity is None:
            if not self.m:
                raise ValueError("sparsity is required for unstructured pruning")
        else:
            self.sparsity = check_sparsity(self.sparsity)
        if self.m and self.sparsity is not None:
            values = self.sparsity.values() if isinstance(self.sparsity, Mapping) else [self.sparsity]
            for value in values:
                if abs(value - self.n / self.m) > 1e-9:
                    raise ValueError(
                        f"sparsity {value} contradicts the {self.pattern} pattern, which prunes exactly "
                        f"{self.n / self.m:.4g}; drop --sparsity or set it to {self.n / self.m:.4g}"
                    )
        check_allocation(self)
        if self.permute and not self.m:
            raise ValueError("permute chooses N:M groups along permuted input channels; it needs an N:M pattern such as '2:4'")
        if self.permute and self.checkpoint_dir:
            raise ValueError("permute keeps each layer's permutation in memory only (a resumed run would lose it); "
                             "drop checkpoint_dir (--checkpoint-dir) or permute")

    def layer_sparsity(self, name: str) -> float:
        if self.sparsity is None:
            return self.n / self.m
        if not isinstance(self.sparsity, Mapping):
            return self.sparsity
        if name in self.sparsity:
            return self.sparsity[name]
        for key, value in self.sparsity.items():
            if key.startswith("re:") and re.fullmatch(key[3:], name):
                return value
        raise ValueError(f"no sparsity given for layer {name!r}; add its name or a 're:<regex>' entry (e.g. 're:.*') to the mapping")
