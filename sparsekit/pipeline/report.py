"""What a pruning run reports: per-layer results and seconds per phase."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    target: float
    reached: float
    seconds: float
    row_sparsity: dict | None = None  # {"min", "max", "std"} of the per-row sparsities of the mask


def row_sparsity_spread(keep: torch.Tensor) -> dict:
    """min / max / std over rows of each row's pruned fraction (an allocation's spread; 0 std = uniform rows)."""
    rows = 1.0 - keep.reshape(keep.shape[0], -1).double().mean(dim=1)
    return {"min": rows.min().item(), "max": rows.max().item(), "std": rows.std().item() if rows.numel() > 1 else 0.0}


@dataclass
class PruneReport:
    method: str
    pattern: str
    layers: list[LayerReport] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    peak_memory_bytes: int | None = None
    placement: str = ""
    backends: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> backend that ran -> calls
    fallbacks: dict[str, str] = field(default_factory=dict)  # "op/backend" -> the kernel error that made it fall back

    @property
    def sparsity(self) -> float:
        """Fraction of pruned weights over all pruned layers."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        pruned = sum(r.reached * r.shape[0] * r.shape[1] for r in self.layers)
        return pruned / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "seconds": dict(self.seconds),
            "peak_memory_bytes": self.peak_memory_bytes,
            "placement": self.placement,
            "backends": self.backends,
            "fallbacks": self.fallbacks,
            "layers": [asdict(r) for r in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PruneReport":
        report = cls(method=data["method"], pattern=data["pattern"], peak_memory_bytes=data.get("peak_memory_bytes"),
                     placement=data.get("placement", ""))
        report.layers = [LayerReport(**{**r, "shape": tuple(r["shape"])}) for r in data["layers"]]
        report.seconds.update(data["seconds"])
        report.add_backends(data.get("backends", {}), data.get("fallbacks", {}))
        return report

    def add_backends(self, used: dict[str, dict[str, int]], fallbacks: dict[str, str]) -> None:
        """Count the backends that ran each op (sparsekit.backend.usage_since) and the automatic fallbacks."""
        for op, calls in used.items():
            for name, n in calls.items():
                self.backends.setdefault(op, {})[name] = self.backends.get(op, {}).get(name, 0) + n
        self.fallbacks.update(fallbacks)

    def table(self) -> str:
        width = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'shape':>12}  {'target':>6}  {'reached':>7}  {'sec':>6}"]
        for r in self.layers:
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(f"{r.name:<{width}}  {shape:>12}  {r.target:>6.3f}  {r.reached:>7.4f}  {r.seconds:>6.2f}")
        lines.append(f"{'total':<{width}}  {'':>12}  {'':>6}  {self.sparsity:>7.4f}")
        return "\n".join(lines)


class PhaseTimer:
    """Accumulates wall seconds per named phase (synchronising CUDA so GPU work is counted)."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    @contextmanager
    def __call__(self, phase: str):
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[phase] += time.perf_counter() - start


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
