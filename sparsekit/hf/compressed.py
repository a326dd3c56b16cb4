"""Compressed 2:4 checkpoints: save a sparsified model, rebuild it with SparseLinear24 layers.

Formats written by `save_pretrained(model, dir, format=...)` (atomic: temp dir + rename):
- "sparsekit" (default): the model's state dict as safetensors, each SparseLinear24 as `<layer>.values`
  (N, K/2) + `<layer>.meta` int16 (N, K/16, torch CUTLASS layout), + config.json, generation_config.json,
  tokenizer and `sparsekit.json` (format "sparse24", the compressed layers, tied-weight aliases).
- "sparse-24-bitmask": compressed-tensors' layout (`<layer>.compressed`, `.bitmask`, `.shape`) with
  `quantization_config.sparsity_config` in config.json, as the Sparse-Llama checkpoints use.
- "dense": a plain HF checkpoint with the zeros written out, loadable by any engine.

`from_pretrained(dir)` reads the first two (and compressed-tensors "sparse-24" files) without pickle:
the model skeleton is built from config.json with empty (meta) parameters, compressed layers are swapped
in, and safetensors tensors are assigned in place.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from sparsekit._version import __version__
from sparsekit._io import output_dir
from sparsekit._io import protected_inputs
from sparsekit.hf import compressed_tensors as ct
from sparsekit.hf.sparsify import set_submodule, sparse_layers
from sparsekit.hf.safetensors_io import assign, finish, read_json, read_state, save_tensors, skeleton, write_json
from sparsekit.nn.sparse_linear import SparseLinear24

log = logging.getLogger(__name__)

FORMATS = ("sparsekit", "sparse-24-bitmask", "dense")
SPARSEKIT_FORMAT = "sparse24"


def _dense_state(model: nn.Module, layers: dict[str, SparseLinear24]) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    for name, layer in layers.items():
        del state[f"{name}.values"], state[f"{name}.meta"]
        for order in ("perm", "in_order", "out_order"):  # dense_weight() / dense_bias() are in the original order
            state.pop(f"{name}.{order}", None)
        weight = layer.dense_weight()
        state[f"{name}.weight"] = weight.t().contiguous() if layer.transposed else weight
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.dense_bias()
    return state


def save_pretrained(model: nn.Module, out_dir, tokenizer=None, *, format: str = "sparsekit", max_shard_size="5GB",
                    extra: dict | None = None, overwrite: bool = False, protect: dict | None = None) -> Path:
    """Write `model` (sparsified with `sparsekit.sparsify`) to `out_dir` atomically; see the module docstring for formats.

    `extra` is merged into sparsekit.json (e.g. how the model was pruned). `out_dir` may be new, empty
    or a previous sparsekit output; anything else needs overwrite=True, and a directory holding the
    model or the working directory (or a path in `protect`) is always refused.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {FORMATS}")
    layers = sparse_layers(model)
    if not layers and format != "dense":
        raise ValueError(f"the model has no SparseLinear24 layers to store as {format!r}: call sparsekit.sparsify(model) "
                         "first, or save it with format='dense' (or sparsekit.save_pruned)")
    guarded = {**protected_inputs(model), **(protect or {})}
    with output_dir(out_dir, overwrite=overwrite, protect=guarded, flag="output directory") as tmp:
        info = {**(extra or {}), "sparsekit_version": __version__}
        if format == "dense":
            model.save_pretrained(tmp, state_dict=_dense_state(model, layers), safe_serialization=True)
            info["format"] = "dense"
        else:
            config = copy.deepcopy(model.config)
            if format == "sparsekit":
                aliases = save_tensors(dict(model.state_dict()), tmp, max_shard_size)
                info.update(format=SPARSEKIT_FORMAT, aliases=aliases, layers={
                    name: {"in_features": m.in_features, "out_features": m.out_features,
                           "bias": m.bias is not None, "transposed": m.transposed, "dtype": str(m.values.dtype).removeprefix("torch."),
                           "permuted": m.perm is not None, "input_ordered": m.in_order is not None,
                           "output_ordered": m.out_order is not None}
                    for name, m in layers.items()})
                config.save_pretrained(tmp)
            else:
                state, kept_dense = ct.bitmask_state(model, layers)
                save_tensors(state, tmp, max_shard_size)
                config.save_pretrained(tmp)
                config_path = tmp / "config.json"
                data = json.loads(config_path.read_text())
                data["quantization_config"] = ct.sparsity_config(model, layers, kept_dense)
                write_json(config_path, data)
                info["format"] = "sparse-24-bitmask"
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "sparsekit.json", info)
    return Path(os.path.abspath(out_dir))


def checkpoint_format(path) -> str:
    """'sparse24' (sparsekit), 'sparse-24-bitmask' / 'sparse-24' (compressed-tensors) or 'dense'."""
    path = Path(path)
    if read_json(path / "sparsekit.json").get("format") == SPARSEKIT_FORMAT:
        return SPARSEKIT_FORMAT
    qconfig = ct.quantization_config(path) or {}
    sparsity = qconfig.get("sparsity_config") or {}
    return sparsity.get("format") or "dense"


def is_compressed(path) -> bool:
    return Path(path).is_dir() and checkpoint_format(path) in (SPARSEKIT_FORMAT, *ct.FORMATS)


def _load_sparsekit(path: Path, info: dict, dtype, backend, trust_remote_code) -> nn.Module:
    model = skeleton(path, trust_remote_code)
    for name, spec in info.get("layers", {}).items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}/sparsekit.json lists layer {name!r} but the model built from config.json has no such module") from None
        layer = SparseLinear24(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=getattr(torch, spec["dtype"]),
                               device="meta", transposed=spec["transposed"], backend=backend, permuted=spec.get("permuted", False),
                               input_ordered=spec.get("input_ordered", False), output_ordered=spec.get("output_ordered", False))
        set_submodule(model, name, layer)
    assign(model, read_state(path, dtype), info.get("aliases", {}), path)
    return model


def from_pretrained(path, *, dtype=None, device="cpu", backend: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """Rebuild a model saved by `save_pretrained` (or a compressed-tensors 2:4 checkpoint) with SparseLinear24 layers.

    dtype: None keeps the stored dtype; device: where the model goes; backend: forced 2:4 matmul backend.
    Weights are read with safetensors only; trust_remote_code stays off unless asked.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no config.json)")
    fmt = checkpoint_format(path)
    if fmt == SPARSEKIT_FORMAT:
        model = _load_sparsekit(path, read_json(path / "sparsekit.json"), dtype, backend, trust_remote_code)
    elif fmt in ct.FORMATS:
        model, kept_dense = ct.load(path, ct.quantization_config(path), dtype, backend, trust_remote_code)
        if kept_dense:
            log.warning("%d compressed layer(s) do not fit the 2:4 CUTLASS layout and were loaded dense: %s", len(kept_dense), kept_dense)
    else:
        raise ValueError(f"{path} is not a compressed 2:4 checkpoint (format {fmt!r}); load a dense checkpoint with "
                         "sparsekit.load_model and call sparsekit.sparsify(model)")
    _verify_loaded(model, path)
    return finish(model, path, device)


def _verify_loaded(model: nn.Module, path: Path) -> None:
    """Once per load: every floating tensor is finite (SparseLinear24 checks its own metadata when assigned)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values; the checkpoint is damaged. "
                             "Re-export it from the pruned model")
