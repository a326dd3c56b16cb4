"""What every benchmark shares: the run context (device, quick mode, where rows go) and skip handling."""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from benchmarks.schema import BenchRow, load_rows, make_row, results_file, upsert_rows


class Skip(Exception):
    """A case that cannot run here; the message is the reason written into the row."""


@dataclass
class RunContext:
    device: torch.device
    quick: bool
    results_root: Path
    command: str
    resume: bool = False
    rep_ms: float = 100.0
    warmup_ms: float = 25.0
    graph_rep_ms: float = 20.0
    copy_gbps: float | None = None  # device-to-device copy bandwidth measured in this run
    written: list[Path] = field(default_factory=list)

    def row(self, **fields) -> BenchRow:
        return make_row(self.device, command=self.command, quick=self.quick, **fields)

    def path(self, benchmark: str) -> Path:
        return results_file(self.results_root, self.device, benchmark, self.quick)

    def save(self, benchmark: str, rows: Iterable[BenchRow]) -> None:
        rows = list(rows)
        if rows:
            path = upsert_rows(self.path(benchmark), rows)
            if path not in self.written:
                self.written.append(path)

    def done(self, benchmark: str) -> set[tuple]:
        """Keys already measured or skipped (--resume skips them; "error" rows are retried)."""
        if not self.resume:
            return set()
        return {r.key for r in load_rows(self.path(benchmark)) if r.status in ("ok", "skipped")}

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def skip_row(ctx: RunContext, benchmark: str, case: str, provider: str, reason: str, *, status: str = "skipped",
             metric: str = "time", unit: str = "ms", params: dict | None = None) -> BenchRow:
    ctx.log(f"{status}: {benchmark} {case} [{provider}]: {reason}")
    return ctx.row(benchmark=benchmark, case=case, provider=provider, metric=metric, unit=unit,
                   status=status, reason=reason, params=params or {})


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def random_like_weights(shape, dtype, device, generator=None) -> torch.Tensor:
    """Random normal data (never zeros: zeros can time faster than real data)."""
    return torch.randn(shape, dtype=torch.float32, device=device, generator=generator).to(dtype)


def prune_24_by_magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| in each group of 4 along the input dimension (no calibration)."""
    from sparsekit import ops

    keep = ops.select_mask(ops.magnitude_score(weight), None, 2, 4)
    return weight * keep.to(weight.dtype)
