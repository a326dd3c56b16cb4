"""compressed-tensors 2:4 checkpoints: write `sparse-24-bitmask`, read it (and legacy `sparse-24`).

Layout (compressed-tensors' Sparse24BitMaskCompressor): per compressed Linear `<m>.compressed` (N, K/2) kept values
in natural order, `<m>.bitmask` uint8 (N, ceil(K/8)) = numpy.packbits(mask, axis=-1, bitorder="little") with exactly
two bits per group of 4, `<m>.shape` int64 [[N], [K]]; config.json carries `quantization_config.sparsity_config`
(older checkpoints: `compression_config`). Legacy `sparse-24` stores torch's CUTLASS (`<m>.weight.sparse_24_packed_weight`,
`<m>.weight.meta`), sparsekit's own layout for fp16/bf16.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparsekit.hf.sparsify import set_submodule
from sparsekit.hf.safetensors_io import assign, dedup, parse_dtype, read_json, read_state, skeleton
from sparsekit.nn.conv1d import is_conv1d
from sparsekit.nn.sparse_linear import SparseLinear24, why_not_24
from sparsekit.ops.sparse24 import bitmask_to_dense, decompress_24, to_bitmask_24

FORMATS = ("sparse-24-bitmask", "sparse-24")
BITMASK_KEYS = ("compressed", "bitmask", "shape")


def quantization_config(path: Path) -> dict | None:
    config = read_json(path / "config.json")
    return config.get("quantization_config") or config.get("compression_config")


def global_sparsity(model: nn.Module, layers: dict[str, SparseLinear24]) -> float:
    zeros = total = 0
    for name, tensor in dedup(model.state_dict())[0].items():
        owner, _, attr = name.rpartition(".")
        if owner in layers:
            if attr == "values":
                layer = layers[owner]
                total += layer.in_features * layer.out_features
                zeros += layer.in_features * layer.out_features - int((tensor != 0).sum())
            elif attr == "bias":
                total += tensor.numel()
                zeros += int((tensor == 0).sum())
        elif tensor.is_floating_point():
            total += tensor.numel()
            zeros += int((tensor == 0).sum())
    return zeros / total if total else 0.0


def bitmask_state(model: nn.Module, layers: dict[str, SparseLinear24]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """compressed-tensors sparse-24-bitmask tensors; Conv1D-born layers (2:4 along the other axis on disk) and
    permuted layers (2:4 only after their input permutation; rows permuted into a consumer's order) stay dense,
    written in the original order."""
    state = dict(model.state_dict())
    dense_layers = []
    for name, layer in layers.items():
        del state[f"{name}.values"], state[f"{name}.meta"]
        permuted = [order for order in ("perm", "in_order", "out_order") if getattr(layer, order) is not None]
        for order in permuted:  # compressed-tensors has no permutation: those layers go dense, original order
            del state[f"{name}.{order}"]
        if layer.transposed or permuted:
            weight = layer.dense_weight()
            state[f"{name}.weight"] = weight.t().contiguous() if layer.transposed else weight
            if layer.bias is not None:
                state[f"{name}.bias"] = layer.dense_bias()
            dense_layers.append(name)
            continue
        compressed, bitmask, shape = to_bitmask_24(layer.values, layer.meta)
        state[f"{name}.compressed"] = compressed
        state[f"{name}.bitmask"] = bitmask
        state[f"{name}.shape"] = torch.tensor(shape, device=compressed.device).reshape(-1, 1)
    return state, dense_layers


def sparsity_config(model: nn.Module, layers: dict[str, SparseLinear24], kept_dense: list[str]) -> dict:
    """`quantization_config` for config.json, as compressed-tensors' ModelCompressor writes it."""
    compressed = set(layers) - set(kept_dense)
    other_linears = sorted(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, SparseLinear24)) and n not in compressed)
    return {
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": "sparse-24-bitmask",
            "targets": ["Linear"],
            "ignore": other_linears,
            "global_sparsity": global_sparsity(model, layers),
            "sparsity_structure": "2:4",
            "registry_requires_subclass": False,
        },
        "transform_config": {},
    }


def _cutlass_16bit(packed: torch.Tensor, path: Path) -> torch.Tensor:
    if packed.dtype not in (torch.float16, torch.bfloat16):
        raise NotImplementedError(f"{path}: sparse-24 tensors of dtype {packed.dtype} are not supported (only float16/bfloat16)")
    return packed


def _check_24(dense: torch.Tensor, name: str, path: Path) -> None:
    """A weight stored as 2:4 keeps at most 2 of every 4 consecutive inputs; more means a corrupt bitmask/meta."""
    rows, cols = dense.shape
    if cols % 4 == 0 and bool(((dense != 0).reshape(rows, cols // 4, 4).sum(-1) > 2).any()):
        raise ValueError(f"{path}: the compressed weight of {name!r} keeps more than 2 of 4 values in some group; "
                         "its bitmask/metadata is corrupt. Re-export the checkpoint")


def load(path: Path, qconfig: dict, dtype, backend, trust_remote_code) -> tuple[nn.Module, list[str]]:
    """Load a compressed-tensors sparse-24-bitmask / sparse-24 checkpoint; returns (model, layers kept dense)."""
    if qconfig.get("config_groups"):
        raise NotImplementedError(f"{path} is a quantized compressed-tensors checkpoint (config_groups); sparsekit reads "
                                  "only sparsity-only checkpoints (sparse-24-bitmask, sparse-24)")
    fmt = qconfig["sparsity_config"]["format"]
    model = skeleton(path, trust_remote_code)
    # read as stored: torch's CUTLASS packing of "sparse-24" depends on the stored 16-bit dtype, so the
    # requested dtype is applied after decompression
    state = read_state(path, None)
    target = parse_dtype(dtype)
    if fmt == "sparse-24-bitmask":
        suffixes, parts = BITMASK_KEYS, lambda p: (bitmask_to_dense(p["compressed"], p["bitmask"], p["shape"]),)
    else:  # "sparse-24": torch CUTLASS (packed, meta) per weight; fp32 there is torch's 1:2 layout, not ours
        suffixes, parts = ("sparse_24_packed_weight", "meta"), lambda p: (decompress_24(_cutlass_16bit(p["sparse_24_packed_weight"], path), p["meta"]),)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key in list(state):
        prefix, _, suffix = key.rpartition(".")
        if suffix in suffixes:
            groups.setdefault(prefix, {})[suffix] = state[key]
    kept_dense = []
    for prefix, tensors in groups.items():
        if set(tensors) != set(suffixes):
            continue  # e.g. a genuine buffer that happens to be called "meta"
        for suffix in suffixes:
            del state[f"{prefix}.{suffix}"]
        name = prefix.removesuffix(".weight")
        (dense,) = parts(tensors)
        _check_24(dense, name, path)
        dense = dense if target is None else dense.to(target)
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path} stores a compressed weight for {name!r}, which the model built from config.json does not have") from None
        # the bias (meta here) is assigned from the checkpoint's `<name>.bias` with everything else
        probe = nn.Linear(dense.shape[1], dense.shape[0], bias=getattr(module, "bias", None) is not None, device="meta")
        probe.weight = nn.Parameter(dense, requires_grad=False)
        if isinstance(module, nn.Linear) and why_not_24(probe, name) is None:
            set_submodule(model, name, SparseLinear24.from_linear(probe, name=name, backend=backend, checked=True))
        else:
            state[f"{name}.weight"] = dense.t().contiguous() if is_conv1d(module) else dense
            kept_dense.append(name)
    if target is not None:
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    assign(model, state, {}, path)
    return model, kept_dense
