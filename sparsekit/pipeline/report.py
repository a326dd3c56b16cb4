"""What a pruning run reports: per-layer results and seconds per phase (`PruneReport`), the summary of a
command-line run with its provenance (`RunSummary`), and the one console table formatter (`format_rows`)."""
from __future__ import annotations

import platform
import sys
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
        rows = [("layer", "shape", "target", "reached", "sec")]
        rows += [(r.name, f"{r.shape[0]}x{r.shape[1]}", f"{r.target:.3f}", f"{r.reached:.4f}", f"{r.seconds:.2f}")
                 for r in self.layers]
        rows.append(("total", "", "", f"{self.sparsity:.4f}"))
        return format_rows(rows, align="<>", min_widths=(5, 12, 6, 7, 6))


def format_rows(rows: list[tuple[str, ...]], align: str = "<", min_widths: tuple[int, ...] = ()) -> str:
    """A console table: one line per row, cells two spaces apart, each column as wide as its widest cell
    (or its `min_widths` entry). `align` gives each column's alignment, "<" (left) or ">" (right); its last
    character applies to the remaining columns. A row may have fewer cells than the table has columns."""
    columns = max(len(row) for row in rows)
    widths = [max([len(row[i]) for row in rows if i < len(row)] + [min_widths[i] if i < len(min_widths) else 0])
              for i in range(columns)]
    return "\n".join("  ".join(f"{cell:{align[min(i, len(align) - 1)]}{widths[i]}}" for i, cell in enumerate(row)).rstrip()
                     for row in rows)


def provenance() -> dict:
    """What produced a result: the command line and the software versions."""
    import torch
    import transformers

    from sparsekit._version import __version__

    return {"command": "sparsekit " + " ".join(sys.argv[1:]), "sparsekit": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine()}


class RunSummary(dict):
    """The JSON summary of a `sparsekit prune` run (a plain dict, written as is), with its console table."""

    def table(self) -> str:
        rows = [("model", self["model"]), ("method", f"{self['method']} ({self['pattern']})"),
                ("sparsity reached", f"{self['sparsity_reached']:.4f}")]
        if "dense_ppl" in self:
            rows.append(("dense ppl", f"{self['dense_ppl']:.3f}"))
        if "pruned_ppl" in self:
            rows.append(("pruned ppl", f"{self['pruned_ppl']:.3f}"))
        if "dense_ppl" in self and "pruned_ppl" in self:
            rows.append(("pruned / dense", f"{self['pruned_ppl'] / self['dense_ppl']:.2f}x"))
        if "eval" in self:
            rows.append(("evaluated on", f"{self['eval']['windows']} windows x {self['eval']['seqlen']} tokens of {self['eval']['text']}"))
        rows.append(("dtype", self["dtype"].removeprefix("torch.")))
        if self.get("placement"):
            rows.append(("placement", self["placement"]))
        if self.get("peak_memory_bytes"):
            rows.append(("peak GPU memory", f"{self['peak_memory_bytes'] / 2**30:.2f} GiB"))
        total = self["seconds"].get("total") or 1.0
        rows += [(f"seconds: {k}", f"{v:7.1f}" + ("" if k == "total" else f"  ({100 * v / total:.0f}%)"))
                 for k, v in self["seconds"].items()]
        return format_rows(rows)


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
