"""SparseLinear24: a Linear whose 2:4-sparse weight is held compressed (values + CUTLASS meta).

Holds `values` (out, in/2) and `meta` int16 (out, in/16) as buffers (plus `bias`), i.e. 0.5625x the
bytes of a 16-bit dense weight, and computes y = x @ W.T + b with the 2:4 matmul (the best backend for
the device, see `sparsekit.ops.sparse24_launch`).

Host cost per call is close to nn.Linear's: the buffers are validated when they change (construction,
load_state_dict, .to()/.cuda()/.half() through `_apply`, assignment), not per call, and forward goes
straight to a launch plan cached per M bucket (provider picked once; for Triton the compiled kernel). A
call checks only x's dtype, device and last dimension; anything unusual takes the fully checked path,
which raises a clear error or handles it. Forward reads no tensor data on the host, so it runs under
torch.compile (fullgraph, through the `sparsekit::sparse24_matmul` custom op) and inside CUDA graphs
(make one eager call per batch size first: that builds the plan).

Channel-permuted layers (pruned with an N:M permutation, see `sparsekit.ops.nm_permutation`) also hold
`perm` (in,) int64: the compressed weight is W[:, perm] and forward computes y = x[..., perm] @ W[:, perm].T + b,
the same y as the dense layer in its original order. The gather costs no separate pass: the Triton and CUDA
kernels read x's columns through an int32 copy of perm in their x loads (the launch plan gets it as one more
pointer); the torch and cuBLAS providers index_select. `sparsekit.sparsify` absorbs the permutation of layers
whose input is produced by an elementwise product of row-permutable layers (LLaMA's down_proj), so only
layers that read the residual stream (q/k/v, gate/up) keep one (`sparsekit.hf.absorb`). Such layers hold
`in_order` (in,) instead of `perm`: the stored columns are the original columns in_order, and x arrives
already in that order (no gather); their producers hold `out_order` (out,): stored row i (and bias[i]) is
the original row out_order[i], so y comes out in that order. `dense_weight()`, `dense_bias()` and
`to_dense()` give the original order (a model converted back with `sparsekit.hf.sparsify.to_dense`, all
layers at once, computes what the pruned dense model did).
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekit import backend as _backend
from sparsekit.m_buckets import MAX_M_BUCKET, m_bucket
from sparsekit.nn.conv1d import is_conv1d as _is_conv1d, weight_out_in as dense_weight
from sparsekit.ops import sparse24_launch as _launch
from sparsekit.ops.permutation import check_permutation
from sparsekit.ops.sparse24 import (DTYPES, check_compressed, check_matmul_operands, check_shape_24, decompress_24,
                                    not_24_message)
from sparsekit.torch_backend.sparse24 import kept_indices

_BUCKET_OF = [0] + [m_bucket(m) for m in range(1, MAX_M_BUCKET + 1)]  # M -> bucket without arithmetic
_OPERANDS = ("values", "meta", "bias")
# attribute a pruning run with an N:M input permutation sets on a dense Linear (not in its state dict, so a
# dense export is unaffected); `sparsekit.sparsify` compresses W[:, perm] and keeps perm in the SparseLinear24
INPUT_PERMUTATION_ATTR = "sparsekit_input_perm"


def check_convertible(module: nn.Module, name: str, perm: torch.Tensor | None = None) -> None:
    """Raise (TypeError / ValueError naming the layer) unless `module` (its columns `perm`, if given) can become a SparseLinear24."""
    if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
        raise TypeError(f"layer {name!r} is a {type(module).__name__}, not an nn.Linear (or transformers Conv1D)")
    weight = dense_weight(module)
    if weight.dtype not in DTYPES:
        raise TypeError(f"layer {name!r} has dtype {weight.dtype}; 2:4 needs float16, bfloat16 or float32 (cast the model)")
    if weight.is_meta:
        raise ValueError(f"layer {name!r} has its weight on the meta device (not loaded); load the weights first")
    check_shape_24(*weight.shape, name=f"layer {name!r} weight")
    if not torch.isfinite(weight).all():
        raise ValueError(f"layer {name!r} weight contains NaN/Inf; the checkpoint is broken")
    if perm is not None:
        check_permutation(perm, weight.shape[1], name=f"layer {name!r} input permutation")
        weight = weight[:, perm.to(weight.device)]
    message = not_24_message(weight, name=f"layer {name!r} weight" + (" with its input permutation" if perm is not None else ""))
    if message:
        raise ValueError(message)


def why_not_24(module: nn.Module, name: str, perm: torch.Tensor | None = None) -> str | None:
    """None if `module` (its columns `perm`, if given) can become a SparseLinear24, else the reason (naming the layer)."""
    try:
        check_convertible(module, name, perm)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


class SparseLinear24(nn.Module):
    """y = x @ W.T + b with W stored 2:4-compressed. Build it with `SparseLinear24.from_linear(linear)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=torch.bfloat16,
                 device=None, transposed: bool = False, backend: str | None = None, permuted: bool = False,
                 input_ordered: bool = False, output_ordered: bool = False):
        super().__init__()
        check_shape_24(out_features, in_features)
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.transposed = transposed  # came from a transformers Conv1D: to_dense() rebuilds one
        self.backend = backend
        self.register_buffer("values", torch.empty(out_features, in_features // 2, dtype=dtype, device=device))
        self.register_buffer("meta", torch.empty(out_features, in_features // 16, dtype=torch.int16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        self.register_buffer("perm", torch.empty(in_features, dtype=torch.int64, device=device) if permuted else None)
        self.register_buffer("in_order", torch.empty(in_features, dtype=torch.int64, device=device) if input_ordered else None)
        self.register_buffer("out_order", torch.empty(out_features, dtype=torch.int64, device=device) if output_ordered else None)
        self.register_load_state_dict_post_hook(_validate_after_load)
        self._revalidate(check_content=False)  # empty buffers: nothing to read yet

    @classmethod
    def from_linear(cls, linear: nn.Module, *, name: str | None = None, backend: str | None = None,
                    checked: bool = False, perm: torch.Tensor | None = None, in_order: torch.Tensor | None = None,
                    out_order: torch.Tensor | None = None) -> "SparseLinear24":
        """Compress a 2:4-pruned nn.Linear (or transformers Conv1D); refuses any other weight, naming the layer.

        perm: input permutation under which the weight is 2:4 (W[:, perm] is); forward gathers x by it.
        in_order: the same column order, but x will arrive already permuted (its producer was given
        out_order): no gather. out_order: store the rows (and bias) in this order, so y comes out permuted.
        checked=True skips the checks when the caller has just run `check_convertible` on this layer.
        """
        if perm is not None and in_order is not None:
            raise ValueError("give perm (gather x) or in_order (x arrives permuted), not both")
        columns = perm if perm is not None else in_order
        if not checked:
            check_convertible(linear, name or type(linear).__name__, columns)
            if out_order is not None:
                check_permutation(out_order, dense_weight(linear).shape[0], name=f"layer {name!r} output order")
        weight = dense_weight(linear)
        module = cls(weight.shape[1], weight.shape[0], bias=linear.bias is not None, dtype=weight.dtype,
                     device="meta", transposed=_is_conv1d(linear), backend=backend, permuted=perm is not None,
                     input_ordered=in_order is not None, output_ordered=out_order is not None)
        if columns is not None:
            columns = columns.to(device=weight.device, dtype=torch.int64).clone()
            weight = weight[:, columns]
            if perm is not None:
                module.perm = columns
            else:
                module.in_order = columns
        bias = linear.bias.detach().to(weight.dtype) if linear.bias is not None else None
        if out_order is not None:
            out_order = out_order.to(device=weight.device, dtype=torch.int64).clone()
            weight = weight[out_order]
            bias = bias[out_order] if bias is not None else None
            module.out_order = out_order
        module.values, module.meta = _backend.call("compress_24", None, weight.device, weight)
        if bias is not None:
            module.bias = bias.clone()
        module._revalidate(check_content=False)  # compress_24 wrote a valid weight
        return module

    # -- validation, once per change of the buffers ------------------------------------------------------

    def _revalidate(self, check_content: bool) -> None:
        """Check the buffers against each other and this layer's shape, make them standard, drop the plans.

        check_content also reads meta (a host sync on GPU): every group must store two distinct columns.
        A failed check leaves the layer refusing to run until its buffers pass (a rejected load_state_dict
        has already copied the bad tensors in).
        """
        self.__dict__["_plans"] = {}
        self.__dict__["_operands"] = None
        self.__dict__["_refused"] = True
        values, meta, bias = self._buffers["values"], self._buffers["meta"], self._buffers["bias"]
        perm = self._buffers.get("perm")
        orders = {"perm": (perm, self.in_features), "in_order": (self._buffers.get("in_order"), self.in_features),
                  "out_order": (self._buffers.get("out_order"), self.out_features)}
        where = f"SparseLinear24(in_features={self.in_features}, out_features={self.out_features})"
        if values is None or meta is None:
            raise ValueError(f"{where} has no values/meta buffers; build it with SparseLinear24.from_linear")
        try:
            n, k = check_compressed(values, meta)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        if (n, k) != (self.out_features, self.in_features):
            raise ValueError(f"{where}: values/meta hold a ({n}, {k}) weight; this layer needs "
                             f"({self.out_features}, {self.in_features})")
        if bias is not None and (bias.shape != (n,) or bias.dtype != values.dtype or bias.device != values.device):
            raise ValueError(f"{where}: bias must be ({n},) {values.dtype} on {values.device}, got "
                             f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
        for name, (order, size) in orders.items():
            if order is not None and (order.shape != (size,) or order.dtype != torch.int64 or order.device != values.device):
                raise ValueError(f"{where}: {name} must be ({size},) int64 on {values.device}, got "
                                 f"{tuple(order.shape)} {order.dtype} on {order.device}")
        if perm is not None and orders["in_order"][0] is not None:
            raise ValueError(f"{where}: holds both perm and in_order; a layer gathers x (perm) or gets it permuted (in_order)")
        for name in _OPERANDS:  # compiled kernels are specialized on contiguous, 16-byte aligned operands
            t = self._buffers[name]
            if t is not None and not t.is_meta and (not t.is_contiguous() or t.data_ptr() % 16):
                self._buffers[name] = t = t.contiguous().clone()
        if check_content and not meta.is_meta:
            idx = kept_indices(self._buffers["meta"])
            if not bool((idx[..., 0] < idx[..., 1]).all()):
                raise ValueError(f"{where}: meta is corrupt (some group stores the same column twice); it was not "
                                 "produced by sparsekit.ops.compress_24 for this weight")
            for name, (order, size) in orders.items():
                if order is not None and not order.is_meta:
                    try:
                        check_permutation(order, size, name=name)
                    except ValueError as exc:
                        raise ValueError(f"{where}: {exc}") from None
        self.__dict__["_refused"] = False
        if not values.is_meta:
            # the kernels read the permutation as contiguous int32 (made once here, not per call)
            perm32 = perm.to(torch.int32).contiguous() if perm is not None else None
            self.__dict__["_operands"] = (self._buffers["values"], self._buffers["meta"], self._buffers["bias"], perm32)
            self.__dict__["_dtype"] = values.dtype
            self.__dict__["_device"] = values.device

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._revalidate(check_content=self._refused)  # a move or cast keeps the content (refused stays refused)
        return result

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if (name in _OPERANDS or name in ("backend", "perm", "in_order", "out_order")) and "_plans" in self.__dict__:
            self.__dict__["_plans"] = {}
            self.__dict__["_operands"] = None  # revalidated on the next call (values and meta change in turn)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_plans": {}}

    # -- forward ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _launch.linear(x, self.values, self.meta, self.bias, self.backend, self.perm)
        k = self.in_features
        if self._operands is None or x.dtype is not self._dtype or x.device != self._device or x.ndim == 0 \
                or x.shape[-1] != k:
            return self._checked_forward(x)
        m = x.numel() // k
        plan = self._plans.get(_BUCKET_OF[m] if m <= MAX_M_BUCKET else MAX_M_BUCKET) if m else None
        if plan is None:
            return self._checked_forward(x)
        return plan(x, *self._operands)

    def _checked_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every check, then the plan for x's M bucket (built on the first call of the bucket)."""
        if self._operands is None:
            self._revalidate(check_content=self._refused)
            if self._operands is None:
                raise ValueError("this SparseLinear24's buffers are on the meta device (not loaded); load the "
                                 "weights (load_state_dict(..., assign=True) or to_empty + load_state_dict) first")
        values, meta, bias, perm = self._operands
        n, k = check_matmul_operands(x, values, meta, bias)
        x2d = x.reshape(-1, k)
        m = x2d.shape[0]
        if m == 0:
            return x.new_zeros(*x.shape[:-1], n)
        bucket = m_bucket(m)
        plan = self._plans.get(bucket)
        if plan is None:
            plan, out = _launch.shared_plan(x2d, values, meta, bias, self.backend, perm)
            self._plans[bucket] = plan
            if out is not None:
                return out.reshape(*x.shape[:-1], n)
        return plan(x, values, meta, bias, perm)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) dense weight with zeros, in the original input and output order (un-permuted)."""
        weight = decompress_24(self.values, self.meta)
        columns = self.perm if self.perm is not None else self.in_order
        if columns is not None:
            dense = torch.empty_like(weight)
            dense[:, columns] = weight
            weight = dense
        if self.out_order is not None:
            dense = torch.empty_like(weight)
            dense[self.out_order] = weight
            weight = dense
        return weight

    def dense_bias(self) -> torch.Tensor | None:
        """The bias in the original output order."""
        if self.bias is None or self.out_order is None:
            return self.bias
        bias = torch.empty_like(self.bias)
        bias[self.out_order] = self.bias
        return bias

    def to_dense(self) -> nn.Module:
        """A dense nn.Linear (or Conv1D, if built from one) holding the weight with zeros, in the original order.

        Equivalent to this layer when it has no in_order/out_order (those expect a permuted producer or consumer:
        convert the whole model, `sparsekit.hf.sparsify.to_dense`)."""
        weight = self.dense_weight()
        bias = self.dense_bias()
        has_bias = bias is not None
        if self.transposed:
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(self.out_features, self.in_features).to(device=weight.device, dtype=weight.dtype)
            dense.weight.data = weight.t().contiguous()
            if has_bias:
                dense.bias.data = bias.clone()
            return dense
        dense = nn.Linear(self.in_features, self.out_features, bias=has_bias, device="meta", dtype=weight.dtype)
        dense.weight = nn.Parameter(weight, requires_grad=False)
        if has_bias:
            dense.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return dense

    def compressed_bytes(self) -> int:
        return self.values.nbytes + self.meta.nbytes

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * self.values.element_size()

    def extra_repr(self) -> str:
        backend = (f", backend={self.backend}" if self.backend else "") + (", input-permuted" if self.perm is not None else "") \
            + (", input arrives permuted" if self.in_order is not None else "") \
            + (", output permuted" if self.out_order is not None else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.values.dtype}, 2:4 compressed ({self.compressed_bytes() / self.dense_bytes():.4f}x dense){backend}")


def _validate_after_load(module: SparseLinear24, incompatible_keys) -> None:
    """load_state_dict post-hook: refuse buffers that do not form this layer's 2:4 weight."""
    module._revalidate(check_content=True)
