"""The compiled CUDA extension: the prebuilt `sparsekit._C`, or a one-time JIT build of csrc/ with ninja.

    module = sparsekit._ext.load()      # the extension module, or raises RuntimeError(reason)
    reason = sparsekit._ext.unavailable_reason()   # None when it loads
    ops = sparsekit._ext.ops()          # torch.ops.sparsekit (sp24_linear, sp24_mm, sp24_decompress), loaded

`pip install --no-build-isolation -e .` with a CUDA torch and nvcc builds `sparsekit._C` (setup.py).
Without it, and when CUDA is present, the sources are compiled on first use with
`torch.utils.cpp_extension.load` (ninja, cached under TORCH_EXTENSIONS_DIR, about a minute the first time)
for the visible GPU's architecture (sm_90a on Hopper, for wgmma-era instructions). SPARSEKIT_JIT_BUILD=0
turns the JIT build off. The outcome, module or reason, is remembered for the process.
"""
from __future__ import annotations

import functools
import glob
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent.parent / "csrc"
JIT_NAME = "sparsekit_C_jit"


def _arch_flags() -> list[str]:
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load as load_extension

    sources = sorted(glob.glob(str(CSRC / "**" / "*.cpp"), recursive=True) + glob.glob(str(CSRC / "**" / "*.cu"), recursive=True))
    if not sources:
        raise RuntimeError(f"no CUDA sources under {CSRC} (is this an installed copy without csrc/?)")
    log.warning("sparsekit: building the CUDA extension from %s (one time, about a minute)", CSRC)
    return load_extension(
        name=JIT_NAME,
        sources=sources,
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", *_arch_flags()],
        verbose=os.environ.get("SPARSEKIT_JIT_VERBOSE", "0") == "1",
    )


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("sparsekit._C"), None
    except ImportError as exc:
        prebuilt = f"sparsekit._C is not built ({exc})"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return None, f"{prebuilt}, and there is no CUDA device to build it for"
    if os.environ.get("SPARSEKIT_JIT_BUILD", "1") == "0":
        return None, f"{prebuilt}, and SPARSEKIT_JIT_BUILD=0 forbids building it now; install with: pip install --no-build-isolation -e ."
    try:
        return _jit_build(), None
    except Exception as exc:  # no nvcc, no ninja, compile error: keep the reason
        return None, f"{prebuilt}, and the JIT build failed: {type(exc).__name__}: {str(exc)[-2000:]}"


def load() -> ModuleType:
    """The extension module; RuntimeError with the reason when it cannot be had."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module


def ops():
    """torch.ops.sparsekit after loading the extension (its TORCH_LIBRARY registers the operators)."""
    load()
    return torch.ops.sparsekit


def unavailable_reason() -> str | None:
    """None when the extension loads (building it if needed), else why not."""
    return _load()[1]
