"""The one place that decides which backend (CUDA extension / Triton / torch) runs an op.

Each op names its implementations as "module:function" strings, imported on first use so a
torch-only machine never imports Triton. `backend=None` picks, in order, the CUDA extension
(CUDA tensors, extension built), Triton (CUDA tensors, Triton importable), torch. An explicitly
requested backend that cannot run raises; an auto-selected one that fails to import falls back.

Triton on CPU tensors runs only under the interpreter (TRITON_INTERPRET=1, set before import):
that is how CI tests the kernels. `SPARSEKIT_BACKEND=torch|triton|cuda` overrides the auto choice.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

BACKENDS = ("cuda", "triton", "torch")

# op name -> {backend: "module:function"}
IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "activation_stats": {
        "torch": "sparsekit.torch_backend.stats:activation_sums",
    },
    "wanda_score": {
        "torch": "sparsekit.torch_backend.selection:wanda_score",
    },
    "select_mask": {
        "torch": "sparsekit.torch_backend.selection:select_mask",
    },
    "wanda_mask": {
        "torch": "sparsekit.torch_backend.selection:wanda_mask",
    },
    "sparsegpt": {
        "torch": "sparsekit.torch_backend.sparsegpt:sparsegpt",
    },
}


def register(op: str, backend: str, target: str) -> None:
    """Add or replace an implementation ("module:function") of `op` for `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    IMPLEMENTATIONS.setdefault(op, {})[backend] = target
    _load.cache_clear()


def triton_interpreting() -> bool:
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
    """None when sparsekit._C is loaded, else the reason it is not."""
    try:
        importlib.import_module("sparsekit._C")
    except Exception as exc:
        return f"the CUDA extension sparsekit._C is not built ({exc}); install with CUDA present: pip install --no-build-isolation -e ."
    return None


def _why_not(backend: str, device: torch.device) -> str | None:
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


def resolve(op: str, backend: str | None, device: torch.device | str) -> tuple[str, Callable]:
    """Return (backend name, implementation) for `op` on tensors living on `device`."""
    device = torch.device(device)
    impls = IMPLEMENTATIONS.get(op)
    if impls is None:
        raise KeyError(f"unknown op {op!r}")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or None for automatic")
        if backend not in impls:
            raise NotImplementedError(f"op {op!r} has no {backend} backend; available: {sorted(impls)}")
        reason = _why_not(backend, device)
        if reason:
            raise RuntimeError(f"backend={backend!r} cannot run {op!r}: {reason}")
        return backend, _load(impls[backend])
    for name in auto_order(device):
        if name in impls and _why_not(name, device) is None:
            try:
                return name, _load(impls[name])
            except ImportError:
                continue
    return "torch", _load(impls["torch"])


def call(op: str, backend: str | None, device, *args, **kwargs):
    return resolve(op, backend, device)[1](*args, **kwargs)
