"""Timing: median and p20/p80 of a callable, on GPU with Triton's timers, on CPU with a wall clock.

GPU: `triton.testing.do_bench` (CUDA events, warm-up, L2 flushed between calls) or, for µs-scale
kernels, `time_cudagraph`: at least 50 calls captured in one CUDA graph on a stream kept per device,
the graph replayed 15 times, each replay timed with CUDA events; the per-call time is replay time /
calls (launch gaps vanish; nothing flushes L2, so callers rotate their inputs with `Rotation` over
more than twice the L2). do_bench with an L2 flush must not time Python-launched µs kernels: when the
host needs longer per call than the flush, it measures the host (shared/docs/kernels-h200.md §1d).
`host_us_per_call` is the eager enqueue cost, reported separately.
CPU: warm-up, then repeated calls timed with perf_counter. Quantiles as Triton computes them
(`torch.quantile`, linear interpolation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    method: str  # "cudagraph", "do_bench", "wallclock"

    def row_fields(self) -> dict:
        return {"metric": "time", "unit": "ms", "median": self.median_ms, "p20": self.p20_ms, "p80": self.p80_ms}


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, p20, p80) of `samples`, interpolated linearly as Triton's do_bench does."""
    q = torch.quantile(torch.tensor(samples, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64))
    return tuple(float(v) for v in q)


def _time_cpu(fn: Callable, warmup_ms: float, rep_ms: float, min_reps: int, max_reps: int) -> Timing:
    start = time.perf_counter()
    fn()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    samples = []
    begin = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or (time.perf_counter() - begin) * 1e3 < rep_ms):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(*quantiles(samples), method="wallclock")


def _time_slow_cuda(fn: Callable, reps: int) -> Timing:
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return Timing(*quantiles(samples), method=f"cuda events x{reps} (slow op)")


def time_fn(fn: Callable, device, *, cudagraph: bool = False, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            min_reps: int = 5, max_reps: int = 10_000, slow_ms: float = 250.0) -> Timing:
    """Time `fn()` on `device`; all times in milliseconds.

    On GPU, an op whose second call (after an untimed warm-up) takes longer than `slow_ms` is timed
    with CUDA events over a few calls instead of do_bench (whose 5-call estimate alone takes seconds).
    """
    if torch.device(device).type != "cuda":
        return _time_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps)
    import triton.testing as tt

    fn()  # compile / autotune / lazy init, outside any capture and untimed
    torch.cuda.synchronize()
    second = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    if (time.perf_counter() - second) * 1e3 > slow_ms:
        return _time_slow_cuda(fn, max(3, min(min_reps, 5)))
    fallback = ""
    if cudagraph:
        try:
            return time_cudagraph(fn, device, rep_ms=rep_ms)
        except Exception as exc:  # not capturable (host sync, allocation pattern, ...): time it uncaptured
            torch.cuda.synchronize()
            fallback = f" (CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:200]})"
    return Timing(*tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES)), method="do_bench" + fallback)


_GRAPH_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def _graph_stream(device) -> "torch.cuda.Stream":
    """One capture stream per device for the whole run (per-stream workspaces are then created once)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _GRAPH_STREAMS:
        _GRAPH_STREAMS[index] = torch.cuda.Stream(device=index)
    return _GRAPH_STREAMS[index]


def time_cudagraph(fn: Callable, device, *, rep_ms: float = 20.0, min_calls: int = 50, max_calls: int = 2000,
                   replays: int = 15) -> Timing:
    """Per-call GPU time of `fn` inside one CUDA graph of max(min_calls, rep_ms worth of) calls, replayed
    `replays` times (quantiles over the replays)."""
    stream = _graph_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # outside the capture: lazy workspaces, autotuning
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            fn()
        end.record()
        end.synchronize()
        estimate_ms = max(start.elapsed_time(end) / 5, 1e-4)
        calls = int(min(max_calls, max(min_calls, rep_ms / estimate_ms)))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn()
        graph.replay()  # first replay uploads the graph
        samples = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / calls)
    torch.cuda.current_stream(device).wait_stream(stream)
    del graph
    return Timing(*quantiles(samples), method=f"cudagraph ({calls} calls x {replays} replays)")


def host_us_per_call(fn: Callable, device, calls: int = 200) -> float:
    """Eager host cost: µs per call to enqueue `fn` back to back (no synchronisation inside the loop)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    synchronize(device)
    return elapsed / calls * 1e6


class Rotation:
    """Cycles through independent input sets, one per call, so repeated calls do not hit in L2."""

    def __init__(self, sets: Sequence):
        if not sets:
            raise ValueError("Rotation needs at least one input set")
        self.sets = list(sets)
        self._i = 0

    def next(self):
        item = self.sets[self._i]
        self._i = (self._i + 1) % len(self.sets)
        return item


def l2_bytes(device) -> int | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))


def rotation_copies(bytes_per_set: int, device, factor: float = 2.0, minimum: int = 2) -> int:
    """Input sets needed so one rotation touches more than `factor` x the L2 size."""
    l2 = l2_bytes(device)
    if not l2:
        return minimum
    return max(minimum, math.ceil(factor * l2 / max(1, bytes_per_set)) + 1)


def copy_bandwidth(device, nbytes: int = 2**30) -> tuple[float, Timing]:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), device, rep_ms=200.0)
    return 2 * src.numel() * 4 / (timing.median_ms * 1e-3) / 1e9, timing
