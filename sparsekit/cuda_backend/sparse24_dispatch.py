"""Which provider runs sparse24_matmul on CUDA when backend=None: a table measured on the device.

Candidates (backends of the "sparse24_matmul" op, implemented beside this file in `sparse24.py`):
"triton" (the memory-bound kernel, small M), "cuda" (sparsekit's compiled kernels) and "cublas"
(decompress into a shared scratch, then dense cuBLAS). "cusparselt" is never a candidate: torch
re-plans it and it needs its own compressed blob on every call (explicit backend="cusparselt" only;
its measured times stay in the table for comparison).

The table, `sparsekit/tuning/sparse24_matmul.json` (or the file named by SPARSEKIT_SPARSE24_TABLE), is
written by `python -m benchmarks kernels --ops matmul --write-table` on the device (`table_from_rows` builds one from its rows): per device name and dtype, per weight shape (N, K),
the median time of every candidate at several M. For a call (M, N, K):
  * the shape is the measured (N, K) nearest in log scale (exact when measured);
  * each candidate's time at M is interpolated linearly in log-time over log-M between the two measured
    M around it (clamped at the ends), and candidates are ranked by that time;
  * the fastest one that is available here (extension built, cuSPARSELt present, ...) wins.
"cublas" is measured at every point, so at measured points the pick is never slower than dense cuBLAS.
Without a table for this device and dtype (an unmeasured GPU) the default is safe rather than fast:
"triton" for M <= DEFAULT_TRITON_MAX_M and "cublas" above (neither keeps a copy of any weight).
Decisions are cached per (device, dtype, M bucket, N, K): the first call of a bucket decides, with M
taken as the bucket's top (`m_bucket`), and nothing here runs again for that bucket.
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch

from sparsekit import backend as _backend
from sparsekit._io import atomic_write_json
from sparsekit.m_buckets import MAX_M_BUCKET, m_bucket  # noqa: F401 (public here too)

OP = "sparse24_matmul"
CANDIDATES = ("triton", "cuda", "cublas")
DEFAULT_TRITON_MAX_M = 64
TABLE_FORMAT = "sparsekit.sparse24_matmul.tuning/1"
DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "tuning" / "sparse24_matmul.json"


def table_path() -> Path:
    return Path(os.environ.get("SPARSEKIT_SPARSE24_TABLE", str(DEFAULT_TABLE)))


@functools.lru_cache(maxsize=None)
def load_table() -> dict:
    """The tuning table ({"format", "devices": {name: {..., "entries": [...]}}}); empty when absent."""
    path = table_path()
    if not path.exists():
        return {"format": TABLE_FORMAT, "devices": {}}
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    if table.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path} is not a sparse24_matmul tuning table (format {table.get('format')!r}, "
                         f"expected {TABLE_FORMAT!r}); delete it or re-run python -m benchmarks kernels --ops matmul --write-table")
    return table


def reload_table() -> None:
    """Forget the loaded table and every cached decision (after the tuner wrote a new one)."""
    load_table.cache_clear()
    _choose.cache_clear()
    _alg_id.cache_clear()


def _row_fields(row) -> dict | None:
    """(device, dtype, M, N, K, provider, µs, alg_id) of a successful benchmark row (benchmarks.schema.BenchRow)."""
    if row.status != "ok" or row.median is None:
        return None
    scale = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}.get(row.unit)
    if scale is None:
        raise ValueError(f"row {row.case!r} [{row.provider}] measures {row.unit!r}, not a time; only time rows make a table")
    params = row.params
    return {"device": row.device, "dtype": params["dtype"], "M": params["M"], "N": params["N"], "K": params["K"],
            "provider": row.provider, "us": row.median * scale, "alg_id": params.get("cusparselt_alg_id")}


def table_from_rows(rows) -> dict:
    """A tuning table from measured rows (BenchRow with params M, N, K, dtype: bench_kernels' 2:4 sweep).

    One entry per (device, dtype, N, K, M) where "cublas" was measured (so a pick is never slower than
    dense cuBLAS at a measured point); "dense" rows become the entry's `dense_ref`.
    """
    points: dict[tuple, dict] = {}
    for row in rows:
        f = _row_fields(row)
        if f is None:
            continue
        point = points.setdefault((f["device"], f["dtype"], f["N"], f["K"], f["M"]), {"times_us": {}, "alg_id": 0})
        name = "dense_ref" if f["provider"] == "dense" else f["provider"]
        point["times_us"][name] = f["us"]
        if f["provider"] == "cusparselt" and f["alg_id"] is not None:
            point["alg_id"] = int(f["alg_id"])
    table = {"format": TABLE_FORMAT, "devices": {}}
    for (device, dtype, n, k, m), point in sorted(points.items()):
        times = point["times_us"]
        ranked = {p: t for p, t in times.items() if p in CANDIDATES}
        if "cublas" not in ranked:
            continue
        entry = {"dtype": dtype, "N": n, "K": k, "M": m, "times_us": times, "best": min(ranked, key=ranked.get),
                 "cusparselt_alg_id": point["alg_id"]}
        table["devices"].setdefault(device, {"entries": []})["entries"].append(entry)
    return table


def write_table(table: dict, path: Path | None = None) -> Path:
    """Write the table atomically (sparsekit._io: temp file beside it, fsync, rename)."""
    return atomic_write_json(Path(path or table_path()), table, indent=1, sort_keys=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shape_points(table: dict, device_name: str, dtype: str, n: int, k: int) -> list[dict]:
    """Measured points (sorted by M) of the measured (N, K) nearest to (n, k) in log scale; [] if none."""
    entries = [e for e in table.get("devices", {}).get(device_name, {}).get("entries", []) if e.get("dtype") == dtype]
    if not entries:
        return []
    shapes = {(e["N"], e["K"]) for e in entries}
    best = min(shapes, key=lambda s: (abs(math.log(s[0] / n)) + abs(math.log(s[1] / k)), s))
    return sorted((e for e in entries if (e["N"], e["K"]) == best), key=lambda e: e["M"])


def estimated_times(points: list[dict], m: int) -> dict[str, float]:
    """Each candidate's time at M (µs), interpolated in log-log between the measured M around it."""
    if not points:
        return {}
    if m <= points[0]["M"]:
        return {p: t for p, t in points[0]["times_us"].items() if p in CANDIDATES}
    if m >= points[-1]["M"]:
        return {p: t for p, t in points[-1]["times_us"].items() if p in CANDIDATES}
    hi = next(i for i, e in enumerate(points) if e["M"] >= m)
    lo_e, hi_e = points[hi - 1], points[hi]
    w = (math.log(m) - math.log(lo_e["M"])) / (math.log(hi_e["M"]) - math.log(lo_e["M"]))
    out = {}
    for p in CANDIDATES:
        t0, t1 = lo_e["times_us"].get(p), hi_e["times_us"].get(p)
        if t0 and t1 and t0 > 0 and t1 > 0:
            out[p] = math.exp((1 - w) * math.log(t0) + w * math.log(t1))
    return out


def rank_providers(table: dict, device_name: str, dtype: torch.dtype | str, m: int, n: int, k: int) -> list[str]:
    """Candidates fastest first for (M, N, K) per the table; [] when the table has nothing for this device/dtype."""
    dtype = dtype if isinstance(dtype, str) else _dtype_name(dtype)
    times = estimated_times(_shape_points(table, device_name, dtype, n, k), m)
    return sorted(times, key=lambda p: (times[p], CANDIDATES.index(p)))


def default_ranking(m: int) -> list[str]:
    """No table (unmeasured GPU): the Triton kernel where decode is memory-bound, cuBLAS on the decompressed weight above."""
    return ["triton", "cublas"] if m <= DEFAULT_TRITON_MAX_M else ["cublas"]


def _available(name: str, device: torch.device) -> bool:
    return name in _backend.IMPLEMENTATIONS[OP] and _backend.why_not(name, device) is None


def select(table: dict, device_name: str, dtype: torch.dtype, m: int, n: int, k: int,
           available: Callable[[str], bool]) -> str | None:
    """The first available provider of the table's ranking (or the default one); cublas as the last resort."""
    ranking = rank_providers(table, device_name, dtype, m, n, k) or default_ranking(m)
    if dtype == torch.float32:  # the mma.sp kernel and cuSPARSELt take 16-bit types only
        ranking = [p for p in ranking if p != "cuda"]
    for name in ranking + ["cublas"]:
        if available(name):
            return name
    return None


@functools.lru_cache(maxsize=8192)
def _choose(device_index: int, dtype: torch.dtype, bucket: int, n: int, k: int) -> str | None:
    device = torch.device("cuda", device_index)
    return select(load_table(), torch.cuda.get_device_name(device), dtype, bucket, n, k,
                  lambda name: _available(name, device))


def choose_provider(device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> str | None:
    """The provider for (M, N, K) on a CUDA device, decided once per (device, dtype, M bucket, N, K); None off CUDA."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _choose(index, dtype, m_bucket(m), n, k)


def choose_backend(device, x2d: torch.Tensor, values: torch.Tensor, meta=None, bias=None, **_) -> str | None:
    """backend.AUTO_CHOOSERS hook: the provider for this call on CUDA; None elsewhere (default order)."""
    return choose_provider(torch.device(device), x2d.dtype, x2d.shape[0], values.shape[0], x2d.shape[1])


@functools.lru_cache(maxsize=8192)
def _alg_id(device_name: str, dtype: torch.dtype, m: int, n: int, k: int) -> int:
    points = _shape_points(load_table(), device_name, _dtype_name(dtype), n, k)
    if not points or (points[0]["N"], points[0]["K"]) != (n, k):
        return 0
    nearest = min(points, key=lambda e: (abs(math.log(e["M"] / m)), e["M"]))
    return int(nearest.get("cusparselt_alg_id", 0))


def cusparselt_alg_id(device, dtype: torch.dtype, m: int, n: int, k: int) -> int:
    """The cuSPARSELt algorithm the tuner found best at the nearest measured M of this exact shape (else 0)."""
    device = torch.device(device)
    return _alg_id(torch.cuda.get_device_name(device), dtype, m, n, k)
