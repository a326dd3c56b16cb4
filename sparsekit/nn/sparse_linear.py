"""SparseLinear24: a Linear whose 2:4-sparse weight is held compressed (values + CUTLASS meta).

Holds `values` (out, in/2) and `meta` int16 (out, in/16) as buffers (plus `bias`), i.e. 0.5625x the
bytes of a 16-bit dense weight, and computes y = x @ W.T + b with `sparsekit.ops.sparse24_matmul`
(the best backend for the device). Its forward reads no tensor data on the host, so it runs under
torch.compile (through the `sparsekit::sparse24_matmul` custom op) and inside CUDA graphs.
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekit import backend as _backend
from sparsekit.ops.sparse24 import DTYPES, check_shape_24, decompress_24, not_24_message, sparse24_matmul


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear or a transformers Conv1D (stored (in, out))."""
    weight = module.weight.detach()
    return weight.t() if _is_conv1d(module) else weight


def check_convertible(module: nn.Module, name: str) -> None:
    """Raise (TypeError / ValueError naming the layer) unless `module` can become a SparseLinear24."""
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
    message = not_24_message(weight, name=f"layer {name!r} weight")
    if message:
        raise ValueError(message)


def why_not_24(module: nn.Module, name: str) -> str | None:
    """None if `module` can become a SparseLinear24, else the reason (naming the layer)."""
    try:
        check_convertible(module, name)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


class SparseLinear24(nn.Module):
    """y = x @ W.T + b with W stored 2:4-compressed. Build it with `SparseLinear24.from_linear(linear)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=torch.bfloat16,
                 device=None, transposed: bool = False, backend: str | None = None):
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

    @classmethod
    def from_linear(cls, linear: nn.Module, *, name: str | None = None, backend: str | None = None,
                    checked: bool = False) -> "SparseLinear24":
        """Compress a 2:4-pruned nn.Linear (or transformers Conv1D); refuses any other weight, naming the layer.

        checked=True skips the checks when the caller has just run `check_convertible` on this layer.
        """
        if not checked:
            check_convertible(linear, name or type(linear).__name__)
        weight = dense_weight(linear)
        module = cls(weight.shape[1], weight.shape[0], bias=linear.bias is not None, dtype=weight.dtype,
                     device="meta", transposed=_is_conv1d(linear), backend=backend)
        module.values, module.meta = _backend.call("compress_24", None, weight.device, weight)
        if linear.bias is not None:
            module.bias = linear.bias.detach().to(weight.dtype).clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse24_matmul(x, self.values, self.meta, self.bias, backend=self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) dense weight with zeros."""
        return decompress_24(self.values, self.meta)

    def to_dense(self) -> nn.Module:
        """An equivalent dense nn.Linear (or Conv1D, if built from one) holding the weight with zeros."""
        weight = self.dense_weight()
        has_bias = self.bias is not None
        if self.transposed:
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(self.out_features, self.in_features).to(device=weight.device, dtype=weight.dtype)
            dense.weight.data = weight.t().contiguous()
            if has_bias:
                dense.bias.data = self.bias.clone()
            return dense
        dense = nn.Linear(self.in_features, self.out_features, bias=has_bias, device="meta", dtype=weight.dtype)
        dense.weight = nn.Parameter(weight, requires_grad=False)
        if has_bias:
            dense.bias = nn.Parameter(self.bias.clone(), requires_grad=False)
        return dense

    def compressed_bytes(self) -> int:
        return self.values.nbytes + self.meta.nbytes

    def dense_bytes(self) -> int:
        return self.in_features * self.out_features * self.values.element_size()

    def extra_repr(self) -> str:
        backend = f", backend={self.backend}" if self.backend else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.values.dtype}, 2:4 compressed ({self.compressed_bytes() / self.dense_bytes():.4f}x dense){backend}")
