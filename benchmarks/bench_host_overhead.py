"""Host overhead: µs of Python per call of SparseLinear24.forward vs nn.Linear.forward, and eager generate tokens/s.

On a GPU both layers launch for real (4096x4096 bf16 by default); the time is the wall time of a burst of
back-to-back calls without synchronizing, short enough that the launch queue never blocks (so it is host
time, not GPU time). On a CPU the CUDA path is emulated (`emulated_cuda_launch`): SparseLinear24 builds
its Triton launch plan with the real code and calls a stub compiled kernel whose launch does nothing, so
only Python is counted, Triton's launcher object included (its C launch and cuLaunchKernel, ~3-6 µs on a
GPU host, are not); nn.Linear runs
for real on a tiny shape (32x64 fp32) where its compute is negligible (compare its M=1 and M=16 times).
Rows: benchmark "host-overhead", cases `forward/<N>x<K>/M=<m>` (metric "host time per call", µs; the
SparseLinear24 row's derived `over_linear_us` is the median of the per-round differences; provider
"SparseLinear24+perm" is the same layer channel-permuted, its gather folded into the kernel) and `generate/tiny-llama/batch=1`
(tokens/s of eager `model.generate`, dense vs 2:4; on CPU the 2:4 layers run the torch provider, which
decompresses the weight every call).
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from unittest import mock

import torch
from torch import nn

from benchmarks.common import RunContext, describe_exception, prune_24_by_magnitude, skip_row
from benchmarks.timing import quantiles, synchronize

BENCHMARK = "host-overhead"
MS = (1, 16)
GENERATE_SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=512, max_position_embeddings=256)


def add_arguments(p) -> None:
    p.add_argument("--host-shape", default=None, help="NxK of the timed layer (default: 4096x4096 on GPU, 32x64 on CPU)")
    p.add_argument("--host-calls", type=int, default=None, help="calls per timed burst (default GPU 200, CPU 20000)")
    p.add_argument("--host-repeats", type=int, default=None, help="timed bursts (default 15; quick 3)")
    p.add_argument("--generate-tokens", type=int, default=None, help="new tokens per eager generate (default 64; quick 8)")


class StubKernel:
    """Stands in for Triton's CompiledKernel. `run` is Triton's own CUDA launcher object (the Python it runs
    around the C launch: scratch allocation checks, argument forwarding) with only the C launch replaced by a
    no-op, when this Triton's CudaLauncher allows it; otherwise a bare no-op (`launcher` says which)."""

    function = None
    packed_metadata = None

    def __init__(self):
        self.launches = 0
        self.run, self.launcher = self._bare, "bare no-op"
        try:
            launcher = self._cuda_launcher()
            launcher(1, 1, 1, 0, None, None, None, None, None)
        except Exception:  # another Triton's launcher internals: time the bare stub, and say so
            return
        self.run, self.launcher, self.launches = launcher, "Triton CudaLauncher.__call__, C launch stubbed", 0

    def _bare(self, *args):
        self.launches += 1

    def _count(self, *args):
        self.launches += 1

    def _cuda_launcher(self):
        from triton.backends.nvidia.driver import CudaLauncher

        launcher = object.__new__(CudaLauncher)  # no driver here: fill what __call__ reads
        launcher.__dict__.update(gsan_enabled=False, num_ctas=1, global_scratch_size=0, global_scratch_align=1,
                                 profile_scratch_size=0, profile_scratch_align=1, launch_cooperative_grid=False,
                                 launch_pdl=False, arg_annotations=None, kernel_signature=None, launch=self._count)
        return launcher


@contextlib.contextmanager
def emulated_cuda_launch():
    """SparseLinear24 on CPU tensors takes the CUDA Triton path: real launch plans, a stub compiled kernel.

    Only plan building is patched (the config is the heuristic one, the first call's output comes from the
    torch reference); every later call runs the real per-call code of SparseLinear24 and LaunchPlan.
    """
    import triton

    from sparsekit.ops import sparse24_launch
    from sparsekit.torch_backend.sparse24 import sparse24_matmul as reference
    from sparsekit.triton_kernels import sparse24_matmul as triton_matmul

    drivers = triton.runtime.driver
    previous = drivers._active  # there is no GPU driver to reset to, so restore the attribute itself
    drivers.set_active(_NoDriver())  # Triton's launcher looks the active driver up on every call

    def resolve_config(x2d, values, meta, bias, bucket, perm=None):
        config = triton_matmul._config_dict(triton_matmul._heuristic_config(bucket, values.shape[0], x2d.shape[1]))
        return config, reference(x2d if perm is None else x2d.index_select(1, perm), values, meta, bias)

    def build_plan(x2d, values, meta, bias, backend, perm=None):
        return triton_matmul.build_launch_plan(x2d, values, meta, bias, perm=perm, compile_kernel=lambda args, kwargs: stub)

    try:
        stub = StubKernel()
        with mock.patch.object(triton_matmul, "_resolve_config", resolve_config), \
                mock.patch.object(sparse24_launch, "build_plan", build_plan):
            sparse24_launch.clear_plans()
            yield stub
    finally:
        sparse24_launch.clear_plans()
        drivers._active = previous


class _NoDriver:
    """The active Triton driver while emulating: Triton's launcher only fetches it (no profiling scratch)."""


def per_call_us(fns, x, calls: int, repeats: int, device) -> list[list[float]]:
    """µs per call of each fn(x): `repeats` rounds, each timing a burst of `calls` calls of every fn in turn
    (interleaved, so a busy machine slows both alike); GC off, synchronized between bursts only."""
    samples = [[] for _ in fns]
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, out in zip(fns, samples):
                synchronize(device)
                start = time.perf_counter_ns()
                for _ in range(calls):
                    fn(x)
                out.append((time.perf_counter_ns() - start) / calls / 1e3)
    finally:
        gc.enable()
        synchronize(device)
    return samples


def _quantiles(samples: list[float]) -> dict:
    return dict(zip(("median", "p20", "p80"), quantiles(samples)))


def _layers(n: int, k: int, dtype, device):
    from sparsekit.nn import SparseLinear24

    torch.manual_seed(0)
    linear = nn.Linear(k, n, device=device, dtype=dtype).requires_grad_(False)
    linear.weight.copy_(prune_24_by_magnitude(linear.weight))
    return linear, SparseLinear24.from_linear(linear)


def _permuted_layers(n: int, k: int, dtype, device):
    """A dense Linear that is 2:4 along a random input permutation, and its SparseLinear24 (with perm)."""
    from sparsekit.nn import SparseLinear24

    torch.manual_seed(1)
    perm = torch.randperm(k, device=device)
    linear = nn.Linear(k, n, device=device, dtype=dtype).requires_grad_(False)
    linear.weight[:, perm] = prune_24_by_magnitude(linear.weight[:, perm])
    return linear, SparseLinear24.from_linear(linear, perm=perm)


def forward_rows(ctx: RunContext, args) -> list:
    cuda = ctx.is_cuda
    shape = args.host_shape or ("4096x4096" if cuda else "32x64")
    n, k = (int(v) for v in shape.lower().split("x"))
    dtype = torch.bfloat16 if cuda else torch.float32
    calls = args.host_calls or (200 if cuda else (2000 if ctx.quick else 20000))
    repeats = args.host_repeats or (3 if ctx.quick else 15)
    launch = "real" if cuda else "stubbed (CUDA Triton path emulated on CPU)"
    linear, sparse = _layers(n, k, dtype, ctx.device)
    linear_p, permuted = _permuted_layers(n, k, dtype, ctx.device)
    rows = []
    with torch.no_grad(), (contextlib.nullcontext(None) if cuda else emulated_cuda_launch()) as stub:
        for m in MS:
            case = f"forward/{n}x{k}/M={m}"
            params = {"M": m, "N": n, "K": k, "dtype": str(dtype).replace("torch.", ""), "calls": calls,
                      "repeats": repeats, "launch": launch, "load_average_1min": os.getloadavg()[0]}
            if stub is not None:
                params["launcher"] = stub.launcher
            x = torch.randn(m, k, device=ctx.device, dtype=dtype)
            try:
                torch.testing.assert_close(sparse(x), linear(x), atol=1e-2, rtol=1e-2)  # warm-up builds the plan
                torch.testing.assert_close(permuted(x), linear_p(x), atol=1e-2, rtol=1e-2)  # its own (permuted) plan
                before = stub.launches if stub else 0
                dense_us, ours_us, perm_us = per_call_us([linear, sparse, permuted], x, calls, repeats, ctx.device)
                dense, ours, ours_perm = _quantiles(dense_us), _quantiles(ours_us), _quantiles(perm_us)
                if stub is not None and stub.launches - before != 2 * calls * repeats:
                    raise RuntimeError("SparseLinear24 did not take the emulated launch-plan path")
            except Exception as exc:  # a row saying why beats a crashed suite
                rows.append(skip_row(ctx, BENCHMARK, case, "SparseLinear24", describe_exception(exc), status="error",
                                     metric="host time per call", unit="us", params=params))
                continue
            over = statistics.median(o - d for o, d in zip(ours_us, dense_us))  # paired by round
            over_perm = statistics.median(o - d for o, d in zip(perm_us, dense_us))
            ctx.log(f"{case}: nn.Linear {dense['median']:.2f} µs, SparseLinear24 {ours['median']:.2f} µs "
                    f"({over:+.2f} µs), input-permuted {ours_perm['median']:.2f} µs ({over_perm:+.2f} µs; launch {launch})")
            rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider="nn.Linear", metric="host time per call",
                                unit="us", params=params, **dense))
            rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider="SparseLinear24", metric="host time per call",
                                unit="us", params=params, derived={"over_linear_us": over}, **ours))
            rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider="SparseLinear24+perm", metric="host time per call",
                                unit="us", params=params, derived={"over_linear_us": over_perm}, **ours_perm))
    return rows


def _tokens_per_s(model, ids, new_tokens: int, repeats: int, device) -> dict:
    samples = []
    for _ in range(repeats + 1):  # the first run warms up (plans, allocator)
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        synchronize(device)
        assert out.shape[1] == ids.shape[1] + new_tokens
        samples.append(new_tokens * ids.shape[0] / (time.perf_counter() - start))
    return _quantiles(samples[1:])


def generate_rows(ctx: RunContext, args) -> list:
    from benchmarks.models import build_llama, prune_24_magnitude_
    from sparsekit.hf.sparsify import sparsify

    new_tokens = args.generate_tokens or (8 if ctx.quick else 64)
    repeats = 2 if ctx.quick else 5
    dtype = torch.bfloat16 if ctx.is_cuda else torch.float32
    case = "generate/tiny-llama/batch=1"
    params = {"batch": 1, "prompt_len": 8, "new_tokens": new_tokens, "dtype": str(dtype).replace("torch.", ""),
              "shape": GENERATE_SHAPE}
    rows = []
    try:
        model = build_llama(GENERATE_SHAPE, device=ctx.device, dtype=dtype)
        prune_24_magnitude_(model)
        ids = torch.randint(1, GENERATE_SHAPE["vocab_size"], (1, 8), device=ctx.device)
        dense = _tokens_per_s(model, ids, new_tokens, repeats, ctx.device)
        sparsify(model)
        sparse = _tokens_per_s(model, ids, new_tokens, repeats, ctx.device)
    except Exception as exc:
        return [skip_row(ctx, BENCHMARK, case, "2:4", describe_exception(exc), status="error", metric="tokens/s",
                         unit="tokens/s", params=params)]
    ctx.log(f"{case}: dense {dense['median']:.1f} tokens/s, 2:4 {sparse['median']:.1f} tokens/s")
    rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider="dense", metric="tokens/s", unit="tokens/s",
                        params=params, **dense))
    rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider="2:4", metric="tokens/s", unit="tokens/s",
                        params=params, derived={"x_dense": sparse["median"] / dense["median"]}, **sparse))
    return rows


def run(ctx: RunContext, args) -> None:
    ctx.save(BENCHMARK, forward_rows(ctx, args))
    ctx.save(BENCHMARK, generate_rows(ctx, args))
