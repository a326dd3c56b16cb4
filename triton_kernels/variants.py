"""Launch variants: what a launcher can compile, declared next to it so CI can compile it for real GPUs.

The interpreter (how CPU tests run the kernels) never lowers a kernel, so compile errors (a non-constexpr
global, a re-assigned constexpr, a layout the backend rejects) only show on a GPU. Every module of this
package with a launched `@triton.jit` kernel (a `*_kernel` function) defines `compile_variants()`
returning the Variants its launcher can pick; tests/kernels/test_compiles_for_gpu.py compiles each one
for sm_80 and sm_90a without a GPU and fails for a kernel that declares none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLOATS = ("fp16", "bf16", "fp32")  # the model dtypes every op accepts
FLOATS_AND_FP64 = FLOATS + ("fp64",)  # ops whose checks (sparsekit.checks.FLOAT_DTYPES) also let float64 in


@dataclass(frozen=True)
class Variant:
    """One compiled specialisation of a kernel, as its launcher calls it on a GPU.

    `types` gives the Triton type of each runtime argument ("*bf16", "i32", "fp32", ...), `constexprs`
    the value of each tl.constexpr argument and of each argument Triton specialises at launch (an int
    equal to 1, e.g. a unit stride). Pointer arguments are taken 16-byte aligned (fresh torch tensors),
    and so are the int arguments named in `aligned` (Triton specialises ints divisible by 16).
    """

    kernel: Any  # the JITFunction the launcher calls (under autotune/heuristics wrappers: their .fn)
    types: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    fp_fusion: bool = True
    aligned: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs.items())
        ptrs = sorted({t for t in self.types.values() if t.startswith("*")})
        return f"{consts} | {' '.join(ptrs)} | warps={self.num_warps} stages={self.num_stages}"
