"""The dtype `auto` stands for: bfloat16 where the hardware multiplies it natively, float32 elsewhere.

A CPU without native bf16 instructions (AVX-512 BF16 / AMX on x86, the BF16 extension on ARM) runs a
bf16 matmul on a slow fallback path: 512x576 @ 576x1536 took 350 ms against 9 ms in float32 on an
AVX2-only path. So on CPU bf16 is chosen only when torch and oneDNN say the path is native, the CPU
flags agree, and a one-off micro-timing (cached in the sparsekit cache directory) confirms that bf16
is not slower than float32. What torch reports is trusted over /proc/cpuinfo, so the environment
variables that restrict torch (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) are respected.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)
PROBE_FILE = "dtype_probe.json"
# bf16 must take at most this fraction of float32's time: native paths measure 0.2-0.6, emulated ones 1.3-60.
NATIVE_RATIO = 1.0


def choose_dtype(device="cpu") -> tuple[torch.dtype, str]:
    """(dtype, why) for computing on `device` ("cpu", "cuda", "cuda:1", a torch.device or None = cpu)."""
    kind = torch.device(device if device is not None else "cpu").type
    if kind == "cuda":
        return _cuda_choice()
    if kind != "cpu":
        return torch.float32, f"no bf16 check for device type {kind!r}; pass --dtype bfloat16 to use it"
    native, why = cpu_has_native_bf16()
    if native:
        return torch.bfloat16, why
    return torch.float32, why


def _cuda_choice() -> tuple[torch.dtype, str]:
    name = torch.cuda.get_device_name()
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation flag
        native = torch.cuda.is_bf16_supported()
    if native:
        return torch.bfloat16, f"{name} computes bf16 natively"
    return torch.float32, (f"{name} has no native bf16 (float16 can overflow in LLM activations; "
                           "pass --dtype float16 to take that risk for speed)")


def cpu_has_native_bf16() -> tuple[bool, str]:
    """Whether bf16 matmuls run natively on this CPU under this torch, and why."""
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = _onednn_bf16()
    flags = cpu_flags()
    arch = platform.machine().lower()
    if arch in ("x86_64", "amd64", "i386", "i686"):
        wanted = X86_BF16_FLAGS
        if not capability.startswith("AVX512"):
            return False, (f"torch's CPU capability is {capability} (no AVX-512 BF16/AMX): bf16 matmuls would take "
                           "an emulated path tens of times slower than float32")
        if onednn is False:
            isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
            return False, "oneDNN has no bf16 path on this CPU" + (f" (ONEDNN_MAX_CPU_ISA={isa})" if isa else "")
        if flags is not None and not any(f in flags for f in wanted):
            return False, f"the CPU lacks {' and '.join(wanted)}: bf16 matmuls are no faster than float32 here"
    elif arch in ("aarch64", "arm64"):
        wanted = ARM_BF16_FLAGS
        if flags is not None and not any(f in flags for f in wanted):
            return False, "the CPU lacks the ARM BF16 extension: bf16 matmuls would take a slow path"
    else:
        wanted = ()
    ratio = bf16_matmul_ratio()
    have = [f for f in wanted if flags and f in flags]
    where = f"{arch} CPU ({capability}{', ' + '/'.join(have) if have else ''})"
    if ratio <= NATIVE_RATIO:
        return True, f"{where}: a bf16 matmul takes {ratio:.2f}x the float32 time (measured once, cached)"
    return False, f"{where}: a bf16 matmul takes {ratio:.1f}x the float32 time (measured once, cached)"


def _onednn_bf16() -> bool | None:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def cpu_flags(cpuinfo="/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo ('flags' on x86, 'Features' on ARM); None if unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe_key() -> str:
    """What the measurement depends on: CPU, torch build, the env vars that restrict torch's kernels, threads."""
    return json.dumps([_cpu_model(), platform.machine(), torch.__version__, torch.backends.cpu.get_cpu_capability(),
                       os.environ.get("ATEN_CPU_CAPABILITY", ""), os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                       torch.get_num_threads()])


@functools.lru_cache(maxsize=None)
def bf16_matmul_ratio(rows: int = 64, inner: int = 576, cols: int = 1536, cache: bool = True) -> float:
    """Time of a bf16 (rows x inner) @ (inner x cols) matmul over float32's (best of 3, after a warm-up).

    SmolLM2's MLP shape; 64 rows keep the probe under half a second even on an emulated bf16 path.
    With `cache`, the ratio is stored per CPU/torch/environment in the sparsekit cache directory.
    """
    path = key = None
    if cache:
        from sparsekit.data.cache import cache_dir

        path, key = cache_dir() / PROBE_FILE, _probe_key() + f"{rows}x{inner}x{cols}"
        stored = _read_json(path)
        if key in stored:
            return float(stored[key])
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(inner, cols, generator=generator)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: oneDNN primitive creation
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    ratio = best[torch.bfloat16] / max(best[torch.float32], 1e-9)
    if path is not None:
        _write_json(path, {**_read_json(path), key: ratio})
    return ratio


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    """Write via a temp file and a rename: a concurrent reader sees the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)  # a read-only cache only costs a re-measurement next time
