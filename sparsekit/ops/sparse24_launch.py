"""The 2:4 matmul's fast entry points: launch plans, decided once, and the `sparsekit::sparse24_matmul` custom op.

A launch plan is everything `backend.call("sparse24_matmul", ...)` works out per call, worked out once per
(device, dtype, M bucket, N, K, bias or not, requested backend): the provider (the dispatcher's pick for the
bucket, or the requested backend), and for Triton on CUDA the compiled kernel with its config, grid and
workspace (`triton_kernels.sparse24_matmul.LaunchPlan`). `plan(x, values, meta, bias, perm=None)` takes x (..., K).

Input-permuted layers (perm (K,) int32, a permutation of the input features) get plans of their own (the key
says whether there is a perm; the perm itself is passed per call, so layers of one shape share a plan). The
"triton" and "cuda" providers fold the gather x[..., perm] into their kernels' x loads; the others
(torch, cublas, cusparselt) index_select x first.

Entry points, cheapest first:
  * `SparseLinear24.forward` keeps its own plans per M bucket (its buffers are validated when they change);
  * `run(x2d, values, meta, bias, backend)`: validates the operands' metadata, then the shared plan;
  * `sparse24_matmul_op`, the custom op torch.compile traces (opaque, with a fake implementation): `run`.
`sparsekit.ops.sparse24_matmul` (the functional API) validates everything and uses the op under compile.

A plan's first call happens outside CUDA-graph capture (a warm-up, as reduce-overhead does): Triton plans
autotune and compile then. After that a call allocates only its output and reads no tensor data.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from sparsekit import backend as _backend
from sparsekit.m_buckets import m_bucket
from sparsekit.ops.sparse24_checks import check_matmul_operands

OP = "sparse24_matmul"


class ProviderPlan:
    """A provider's `impl(x2d, values, meta, bias, perm=None) -> (M, N)` resolved once; no operand contract beyond validity."""

    __slots__ = ("name", "impl", "n", "k")
    standard_operands_only = False

    def __init__(self, name: str, impl: Callable, n: int, k: int):
        self.name, self.impl, self.n, self.k = name, impl, n, k

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x, values, meta, bias, perm=None):
        if x.dim() == 2:
            return self.impl(x, values, meta, bias) if perm is None else self.impl(x, values, meta, bias, perm=perm)
        x2d = x.reshape(-1, self.k)
        out = self.impl(x2d, values, meta, bias) if perm is None else self.impl(x2d, values, meta, bias, perm=perm)
        return out.reshape(*x.shape[:-1], self.n)


def build_plan(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
               backend: str | None, perm: torch.Tensor | None = None) -> tuple[Callable, torch.Tensor]:
    """(plan for x2d's M bucket, this call's output) for validated operands with M >= 1 (perm: int32, or None)."""
    name, impl = _backend.resolve(OP, backend, x2d.device, (x2d, values, meta, bias))
    if name == "triton" and x2d.device.type == "cuda":
        from sparsekit.triton_kernels.sparse24_matmul import build_launch_plan

        return build_launch_plan(x2d, values, meta, bias, perm=perm)
    plan = ProviderPlan(name, impl, values.shape[0], x2d.shape[1])
    return plan, plan(x2d, values, meta, bias, perm)


_PLANS: dict[tuple, Callable] = {}


def plan_key(x2d: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, backend: str | None,
             permuted: bool = False) -> tuple:
    return (x2d.device, x2d.dtype, m_bucket(x2d.shape[0]), values.shape[0], x2d.shape[1], bias is not None, backend,
            permuted)


def shared_plan(x2d, values, meta, bias, backend, perm=None) -> tuple[Callable, torch.Tensor | None]:
    """(the plan shared by every caller with this key, the output if this call built it, else None)."""
    key = plan_key(x2d, values, bias, backend, perm is not None)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan, None
    plan, out = build_plan(x2d, values, meta, bias, backend, perm)
    _PLANS[key] = plan
    return plan, out


def clear_plans() -> None:
    """Forget every shared plan (after the dispatcher table changed; modules keep theirs until their buffers change)."""
    _PLANS.clear()


def standard_operands(values, meta, bias) -> bool:
    """Contiguous and 16-byte aligned: what compiled Triton plans are specialized on."""
    return all(t is None or (t.is_contiguous() and t.data_ptr() % 16 == 0) for t in (values, meta, bias))


def check_perm_operand(perm: torch.Tensor | None, k: int, device: torch.device) -> None:
    """Metadata of a kernel permutation (K,) int32/int64 on x's device (its content is the caller's: no host sync)."""
    if perm is None:
        return
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int32, torch.int64) or perm.shape != (k,):
        got = f"{perm.dtype} {tuple(perm.shape)}" if isinstance(perm, torch.Tensor) else type(perm).__name__
        raise ValueError(f"perm must be a ({k},) int32/int64 tensor (a permutation of the input features), got {got}")
    if perm.device != device:
        raise ValueError(f"perm is on {perm.device} but x is on {device}; move it with .to(x.device)")


def run(x2d: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
        backend: str | None = None, perm: torch.Tensor | None = None) -> torch.Tensor:
    """x2d (M, K) [:, perm] @ W.T (+ bias) through the shared plan; the operands' metadata is checked (no host sync)."""
    n, k = check_matmul_operands(x2d, values, meta, bias)
    if x2d.dim() != 2:
        raise ValueError(f"x must be 2-D (M, K) here, got shape {tuple(x2d.shape)}")
    check_perm_operand(perm, k, x2d.device)
    if x2d.shape[0] == 0:
        return x2d.new_zeros(0, n)
    if perm is not None and (perm.dtype != torch.int32 or not perm.is_contiguous() or perm.data_ptr() % 16):
        perm = perm.to(torch.int32).clone(memory_format=torch.contiguous_format)  # plans assume an aligned pointer
    plan, out = shared_plan(x2d, values, meta, bias, backend, perm)
    if out is not None:
        return out
    if plan.standard_operands_only and not standard_operands(values, meta, bias):
        if perm is None:
            return _backend.call(OP, backend, x2d.device, x2d, values, meta, bias)
        return _backend.call(OP, backend, x2d.device, x2d, values, meta, bias, perm=perm)
    return plan(x2d, values, meta, bias, perm)


@torch.library.custom_op("sparsekit::sparse24_matmul", mutates_args=())
def sparse24_matmul_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
                       backend: Optional[str], perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    return run(x, values, meta, bias, backend, perm)


@sparse24_matmul_op.register_fake
def _(x, values, meta, bias, backend, perm=None):
    return x.new_empty(x.shape[0], values.shape[0])


def linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
           backend: str | None = None, perm: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> (..., N) through the custom op (what SparseLinear24 runs under torch.compile)."""
    k = values.shape[1] * 2
    out = sparse24_matmul_op(x.reshape(-1, k), values, meta, bias, backend, perm)
    return out.reshape(*x.shape[:-1], values.shape[0])
