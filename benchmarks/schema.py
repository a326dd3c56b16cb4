"""One row schema for every benchmark result, stored as JSON lines.

A row says what was measured (benchmark, case, provider, params), where (device name and kind,
torch / triton / CUDA versions), from what (git commit, command line) and the result: median,
p20 and p80 of `metric` in `unit`, plus derived metrics (speedup, GB/s, TFLOP/s, ...). A case
that could not run is kept as a row with status "skipped" (or "error") and the reason, so a table
shows a gap with its cause instead of silently dropping a provider.

Rows live in `<results>/<device-slug>/<benchmark>.jsonl` (quick runs: `<results>/<device-slug>/quick/`).
`upsert_rows` replaces rows with the same key (benchmark, case, provider) and rewrites the file
atomically (temp file + rename) under an exclusive lock; `append_rows` keeps history.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sparsekit._io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
STATUSES = ("ok", "skipped", "error")


@dataclass
class BenchRow:
    benchmark: str  # kernels | decode | prune-time | accuracy | zeroshot
    case: str  # e.g. "sparse24_matmul/11008x4096/M=16"
    provider: str  # e.g. dense | triton | cuda | cusparselt | torch | wanda
    metric: str  # what median/p20/p80 measure, e.g. "time", "ppl", "tokens/s"
    unit: str  # e.g. "ms", "", "tokens/s"
    median: float | None = None
    p20: float | None = None
    p80: float | None = None
    params: dict = field(default_factory=dict)  # inputs of the case (shape, M, dtype, batch, ...)
    derived: dict = field(default_factory=dict)  # speedup, GB/s, % copy bandwidth, TFLOP/s, ...
    status: str = "ok"
    reason: str = ""  # why skipped / failed
    quick: bool = False
    device: str = ""
    device_kind: str = ""  # "cuda" or "cpu": CPU rows are never compared with GPU rows
    torch: str = ""
    triton: str | None = None
    cuda: str | None = None
    git_commit: str = ""
    command: str = ""
    timestamp: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.benchmark, self.case, self.provider)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchRow":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"result row has unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device) -> str:
    """Human-readable device name: the GPU's name, or 'CPU: <model>'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_name()} ({os.cpu_count()} threads visible, torch uses {torch.get_num_threads()})"


def device_slug(device) -> str:
    """Directory name for a device's results: 'cuda-nvidia-h100-80gb-hbm3', 'cpu-<model>'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda-" + slugify(torch.cuda.get_device_name(device))
    return "cpu-" + slugify(_cpu_name())


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """HEAD's hash, '+dirty' when the tree has uncommitted changes, 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda}


def environment(device, command: str | None = None) -> dict:
    """The fields of a row that describe where and how it was measured."""
    import torch

    return {
        "device": device_name(device),
        "device_kind": torch.device(device).type,
        **versions(),
        "git_commit": git_commit(),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def make_row(device, *, command: str | None = None, **fields) -> BenchRow:
    """A BenchRow with the environment filled in."""
    return BenchRow(**{**environment(device, command), **fields})


def results_dir(root, device, quick: bool = False) -> Path:
    path = Path(root) / device_slug(device)
    return path / "quick" if quick else path


def results_file(root, device, benchmark: str, quick: bool = False) -> Path:
    return results_dir(root, device, quick) / f"{benchmark}.jsonl"


def load_rows(path) -> list[BenchRow]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(BenchRow.from_dict(json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not a result row ({exc})") from None
    return rows


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock per results file (the lock file lives in the temp dir, not in the results tree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"sparsekit-bench-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_rows(path: Path, rows: Iterable[BenchRow]) -> None:
    atomic_write_text(path, "".join(row.to_json() + "\n" for row in rows))


def upsert_rows(path, rows: Iterable[BenchRow]) -> Path:
    """Replace rows with the same (benchmark, case, provider) key, keep the others, in file order."""
    path = Path(path)
    rows = list(rows)
    with _locked(path):
        new = {row.key: row for row in rows}  # the last of duplicate keys wins
        merged = [new.pop(row.key) if row.key in new else row for row in latest(load_rows(path))]
        _write_rows(path, merged + list(new.values()))
    return path


def append_rows(path, rows: Iterable[BenchRow]) -> Path:
    """Add rows at the end (history is kept; tables use the newest row per key)."""
    path = Path(path)
    with _locked(path):
        _write_rows(path, load_rows(path) + list(rows))
    return path


def latest(rows: Iterable[BenchRow]) -> list[BenchRow]:
    """The last row per key, in first-seen key order."""
    last: dict[tuple, BenchRow] = {}
    for row in rows:
        last[row.key] = row  # updating a key keeps its first position
    return list(last.values())
