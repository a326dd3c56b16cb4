"""The one place that decides which backend (CUDA extension / Triton / torch) runs an op.

Each op names its implementations as "module:function" strings, imported on first use so a
torch-only machine never imports Triton. `backend=None` picks, in order, the CUDA extension
(CUDA tensors, extension built), Triton (CUDA tensors, Triton importable), torch. An explicitly
requested backend that cannot run raises; an auto-selected one that fails to import falls back.
An op listed in AUTO_CHOOSERS lets a chooser pick by its arguments first (sparse24_matmul: the tuned
table of sparsekit.cuda_backend.sparse24_dispatch, by M bucket, N, K on the device).

Triton on CPU tensors runs only under the interpreter (TRITON_INTERPRET=1, set before import):
that is how CI tests the kernels. `SPARSEKIT_BACKEND=torch|triton|cuda` overrides the auto choice.
"""
from __future__ import annotations

import functools
import importlib
import os
import traceback
import warnings
from collections import Counter
from typing import Callable

import torch

BACKENDS = ("cuda", "triton", "torch", "cusparselt", "cublas")
# "cusparselt" / "cublas" are library providers on CUDA tensors (sparsekit.cuda_backend): never in the
# default order, reached through an op's AUTO_CHOOSERS entry or by asking for them explicitly.

# op name -> {backend: "module:function"}
IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "activation_stats": {
        "torch": "sparsekit.torch_backend.activation_stats:activation_sums",
        "triton": "sparsekit.triton_kernels.activation_stats:activation_sums",
    },
    "wanda_score": {
        "torch": "sparsekit.torch_backend.selection:wanda_score",
    },
    "select_mask": {
        "torch": "sparsekit.torch_backend.selection:select_mask",
        "triton": "sparsekit.triton_kernels.selection:select_mask",
    },
    "wanda_mask": {
        "torch": "sparsekit.torch_backend.selection:wanda_mask",
        "triton": "sparsekit.triton_kernels.selection:wanda_mask",
    },
    "sparsegpt": {
        "torch": "sparsekit.torch_backend.sparsegpt:sparsegpt",
    },
    "sparsegpt_saliency": {"torch": "sparsekit.torch_backend.sparsegpt:sparsegpt_saliency"},
    # DSnoT swaps, see sparsekit.ops.dsnot (inputs prepared there so both backends agree exactly)
    "dsnot": {
        "torch": "sparsekit.torch_backend.dsnot:dsnot",
        "triton": "sparsekit.triton_kernels.dsnot:dsnot",
    },
    # DSnoT mode="exact": swaps by the exact change of d H d^T (dense Hessian per layer)
    "dsnot_exact": {
        "torch": "sparsekit.torch_backend.dsnot_exact:dsnot_exact",
        "triton": "sparsekit.triton_kernels.dsnot_exact:dsnot_exact",
    },
    # BESA masked linear, see sparsekit.ops.besa_masked_linear: forward(x2d, weight, ranks, counts) -> y2d;
    # backward(grad_y2d, x2d, weight, ranks, counts, bucket_of_rank, K, need_grad_x) -> (grad_x | None, bins)
    "besa_masked_linear_forward": {
        "torch": "sparsekit.torch_backend.besa_masked_linear:besa_masked_linear_forward",
        "triton": "sparsekit.triton_kernels.besa_masked_linear:besa_masked_linear_forward",
    },
    "besa_masked_linear_backward": {
        "torch": "sparsekit.torch_backend.besa_masked_linear:besa_masked_linear_backward",
        "triton": "sparsekit.triton_kernels.besa_masked_linear:besa_masked_linear_backward",
    },
    # optimal weight updates on a mask and the ADMM/ALPS mask-selecting methods, see sparsekit.ops.reconstruct
    "reconstruct_alps": {"torch": "sparsekit.torch_backend.reconstruct:alps_reconstruct"},
    "reconstruct_admm": {"torch": "sparsekit.torch_backend.reconstruct:admm_reconstruct"},
    "admm_prune": {"torch": "sparsekit.torch_backend.reconstruct:admm_prune"},
    "alps_prune": {"torch": "sparsekit.torch_backend.reconstruct:alps_prune"},
    # RIA's channel reallocation + LSA for N:M, see sparsekit.ops.permutation
    "nm_permutation": {"torch": "sparsekit.torch_backend.permutation:nm_permutation"},
    "compress_24": {
        "torch": "sparsekit.torch_backend.sparse24:compress_24",
    },
    "decompress_24": {
        "torch": "sparsekit.torch_backend.sparse24:decompress_24",
    },
    # impl(x2d (M, K) any strides, values (N, K/2), meta int16 (N, K/16), bias (N,) | None) -> (M, N) in x's dtype
    "sparse24_matmul": {
        "torch": "sparsekit.torch_backend.sparse24:sparse24_matmul",
        "triton": "sparsekit.triton_kernels.sparse24_matmul:sparse24_matmul",
        "cuda": "sparsekit.cuda_backend.sparse24:sparse24_matmul_cuda",
        "cusparselt": "sparsekit.cuda_backend.sparse24:sparse24_matmul_cusparselt",
        "cublas": "sparsekit.cuda_backend.sparse24:sparse24_matmul_cublas",
    },
}

# op name -> "module:function" choosing the backend when backend=None: chooser(device, *args, **kwargs)
# returns a backend name (used if available, else the default order) or None (default order).
AUTO_CHOOSERS: dict[str, str] = {
    "dsnot_exact": "sparsekit.ops.dsnot:choose_exact_backend",
    "sparse24_matmul": "sparsekit.cuda_backend.sparse24_dispatch:choose_backend",
}


def register(op: str, backend: str, target: str) -> None:
    """Add or replace an implementation ("module:function") of `op` for `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    IMPLEMENTATIONS.setdefault(op, {})[backend] = target
    _load.cache_clear()


def triton_interpreting() -> bool:
    """Whether Triton kernels run under the interpreter (TRITON_INTERPRET=1), read at each call: every kernel
    launcher that adapts to the interpreter asks here, so a test can flip it (monkeypatch) without a re-import."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_available() -> str | None:
    """None when Triton can be used, else the reason it cannot."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"triton is not importable ({exc})"
    return None


@functools.lru_cache(maxsize=None)
def cuda_extension_available() -> str | None:
    """None when the CUDA extension loads (prebuilt sparsekit._C or a JIT build, see sparsekit._ext), else why not."""
    from sparsekit import _ext

    reason = _ext.unavailable_reason()
    if reason:
        return f"the CUDA extension is unavailable: {reason}; install with CUDA present: pip install --no-build-isolation -e ."
    return None


@functools.lru_cache(maxsize=None)
def cusparselt_available() -> str | None:
    """None when torch's cuSPARSELt ops can run, else why not."""
    if not hasattr(torch, "_cslt_sparse_mm") or not torch.backends.cusparselt.is_available():
        return f"this torch ({torch.__version__}) has no cuSPARSELt (torch.backends.cusparselt.is_available() is False)"
    return None


def why_not(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run ops on tensors living on `device` here, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "triton":
        reason = triton_available()
        if reason:
            return reason
        if device.type != "cuda" and not triton_interpreting():
            return f"Triton kernels need CUDA tensors (got {device}); set TRITON_INTERPRET=1 before importing sparsekit to run them on CPU (slow, for tests)"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the CUDA backend needs CUDA tensors (got {device})"
        return cuda_extension_available()
    if backend in ("cusparselt", "cublas"):
        if device.type != "cuda":
            return f"the {backend} provider needs CUDA tensors (got {device})"
        return cusparselt_available() if backend == "cusparselt" else None
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or None")


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def auto_order(device: torch.device) -> tuple[str, ...]:
    forced = os.environ.get("SPARSEKIT_BACKEND")
    if forced:
        return (forced,)
    return ("cuda", "triton", "torch") if device.type == "cuda" else ("torch",)


def _chosen(op: str, impls: dict[str, str], device: torch.device, args: tuple, kwargs: dict) -> tuple[str, Callable] | None:
    """The op's AUTO_CHOOSERS pick for these arguments, if it names an available backend."""
    chooser = AUTO_CHOOSERS.get(op)
    if chooser is None or os.environ.get("SPARSEKIT_BACKEND"):
        return None
    name = _load(chooser)(device, *args, **kwargs)
    if name is None or name not in impls or why_not(name, device) is not None or (op, name) in _FAILED:
        return None
    try:
        return name, _load(impls[name])
    except ImportError:
        return None


def resolve(op: str, backend: str | None, device: torch.device | str, args: tuple = (), kwargs: dict | None = None) -> tuple[str, Callable]:
    """Return (backend name, implementation) for `op` on tensors living on `device`.

    `args`/`kwargs` (the call's arguments) are passed to the op's AUTO_CHOOSERS entry when backend is None.
    """
    device = torch.device(device)
    impls = IMPLEMENTATIONS.get(op)
    if impls is None:
        raise KeyError(f"unknown op {op!r}")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or None for automatic")
        if backend not in impls:
            raise NotImplementedError(f"op {op!r} has no {backend} backend; available: {sorted(impls)}")
        reason = why_not(backend, device)
        if reason:
            raise RuntimeError(f"backend={backend!r} cannot run {op!r}: {reason}")
        return backend, _load(impls[backend])
    chosen = _chosen(op, impls, device, args, kwargs or {})
    if chosen is not None:
        return chosen
    for name in auto_order(device):
        if name in impls and why_not(name, device) is None and (op, name) not in _FAILED:
            try:
                return name, _load(impls[name])
            except ImportError:
                continue
    return "torch", _load(impls["torch"])


# Automatic choices whose kernel failed to compile or launch ((op, backend) -> the error): skipped from then on.
_FAILED: dict[tuple[str, str], str] = {}
_USED: Counter = Counter()  # (op, backend) -> calls that returned, see usage()
# CUDA-extension launch failures that another backend can recover from (a build without this GPU's arch)
_CUDA_LAUNCH_FAILURES = ("no kernel image is available", "invalid device function", "PTX JIT compil", "unsupported toolchain")


def call(op: str, backend: str | None, device, *args, **kwargs):
    """Run `op` on the requested backend, or on the automatic choice.

    An automatic choice whose kernel fails to compile or launch (a Triton compiler error, a CUDA build without
    this GPU's architecture) is not fatal: a one-time warning names the op, the kernel and the error, the
    backend is skipped for this op from then on, and the next backend runs. A requested backend raises.
    """
    name, impl = resolve(op, backend, device, args, kwargs)
    try:
        result = impl(*args, **kwargs)
    except Exception as exc:
        if backend is not None or name == "torch" or not _is_kernel_failure(exc):
            raise
        _FAILED[(op, name)] = _error_text(exc)
        warnings.warn(f"sparsekit: the {name} backend of {op!r} failed in kernel {_kernel_name(exc, IMPLEMENTATIONS[op][name])} "
                      f"({_FAILED[(op, name)]}); using the next backend for {op!r} from now on "
                      f"(pass backend={name!r} to see the full error)", RuntimeWarning, stacklevel=2)
        return call(op, backend, device, *args, **kwargs)
    _USED[(op, name)] += 1
    return result


def _is_kernel_failure(exc: Exception) -> bool:
    """A compile or launch failure of a kernel (not a wrong input or an out-of-memory): Triton's own errors
    (CompilationError, OutOfResources, PTXASError, ...) and CUDA-extension launches without code for this GPU."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    if type(exc).__module__.split(".")[0] == "triton":
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _CUDA_LAUNCH_FAILURES)


def _error_text(exc: BaseException) -> str:
    """One line: the innermost cause's type and last message line (Triton puts the source excerpt first)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "^"]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _kernel_name(exc: Exception, target: str) -> str:
    """The @triton.jit function being compiled or launched when exc was raised, else the implementation."""
    name = target
    for frame, _ in traceback.walk_tb(exc.__traceback__):  # innermost last: JITFunction.run, then triton.compile
        found = frame.f_locals.get("self"), frame.f_locals.get("src")
        if type(found[0]).__name__ == "JITFunction":
            name = getattr(found[0].fn, "__name__", name)
        elif type(found[1]).__name__ == "ASTSource":
            name = getattr(found[1], "name", name)
    return name


def usage() -> Counter:
    """(op, backend) -> calls that returned so far in this process (a copy; see usage_since)."""
    return Counter(_USED)


def usage_since(before: Counter) -> dict[str, dict[str, int]]:
    """{op: {backend: calls}} made since `before = usage()`: the backends that actually ran."""
    used: dict[str, dict[str, int]] = {}
    for (op, name), calls in sorted((_USED - before).items()):
        used.setdefault(op, {})[name] = calls
    return used


def fallbacks() -> dict[str, str]:
    """{"op/backend": error} for every automatic choice that failed and is skipped now."""
    return {f"{op}/{name}": error for (op, name), error in sorted(_FAILED.items())}
