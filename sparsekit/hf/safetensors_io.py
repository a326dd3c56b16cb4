"""Tensors in and out of checkpoint directories: safetensors only, a meta-device skeleton, tied weights.

Shared by the sparsekit and compressed-tensors checkpoint formats (`sparsekit.hf.compressed`), model
loading (`sparsekit.hf.loading`: dtype names, the disk-offload skeleton) and block streaming
(`sparsekit.pipeline.placement.DiskStream`). It imports no other sparsekit module but `_io`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype) -> torch.dtype | None:
    """A torch dtype, or None for the checkpoint's own ('checkpoint', and 'auto' where no device is known)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype in ("auto", "checkpoint"):
        return None if dtype in ("auto", "checkpoint") else dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'") from None


def dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop entries that are the same tensor as an earlier one (tied weights); returns (state, alias -> kept name)."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = tensor
    return out, aliases


def write_json(path: Path, data: dict) -> None:
    from sparsekit._io import atomic_write_json

    atomic_write_json(path, data, sort_keys=True)


def save_tensors(state: dict[str, torch.Tensor], out: Path, max_shard_size) -> dict[str, str]:
    """Write `state` as (sharded) safetensors, tied duplicates once; returns alias -> kept name."""
    from huggingface_hub import save_torch_state_dict

    state, aliases = dedup(state)
    state = {k: v.detach().cpu() for k, v in state.items()}
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    return aliases


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def skeleton(path: Path, trust_remote_code: bool) -> nn.Module:
    """The model from config.json with parameters on the meta device; buffers (e.g. rotary tables) are real."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key in ("quantization_config", "compression_config"):
        if hasattr(config, key):
            delattr(config, key)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


def assign(model: nn.Module, state: dict[str, torch.Tensor], aliases: dict[str, str], path: Path) -> None:
    """Assign `state` into the skeleton, restore tied weights, and refuse anything left empty."""
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{path} holds tensors the model built from its config.json does not have: {unexpected[:5]}"
                         f"{' …' if len(unexpected) > 5 else ''}; the checkpoint does not match its config")
    for alias, target in aliases.items():
        owner, _, attr = alias.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        source = model.get_parameter(target) if target in dict(model.named_parameters()) else model.get_buffer(target)
        setattr(module, attr, source)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if empty:
        raise ValueError(f"{path} is missing {len(empty)} tensor(s) the model needs, e.g. {empty[:5]}; the checkpoint is incomplete")


def read_state(path: Path, dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, floating ones cast to `dtype` (None keeps them); skeleton buffers stay as built."""
    dtype = parse_dtype(dtype)
    state = read_tensors(path)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def finish(model: nn.Module, path: Path, device) -> nn.Module:
    from transformers import GenerationConfig

    model.to(device)
    if (path / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


class SafetensorsIndex:
    """Tensor name -> file for one checkpoint directory (single file or sharded with an index)."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {key: directory / name for key, name in weight_map.items()}
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no safetensors weights in {directory}; disk streaming needs a safetensors checkpoint")
            from safetensors import safe_open

            self.files = {}
            for file in files:
                with safe_open(file, framework="pt") as fh:
                    self.files.update({key: file for key in fh.keys()})

    def load(self, keys: list[str], device) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        missing = [k for k in keys if k not in self.files]
        if missing:
            raise KeyError(f"tensors {missing[:3]}… are not in the checkpoint; its names differ from the model's (use --offload cpu)")
        out, by_file = {}, {}
        for key in keys:
            by_file.setdefault(self.files[key], []).append(key)
        for file, names in by_file.items():
            with safe_open(file, framework="pt", device=str(device)) as fh:
                out.update({name: fh.get_tensor(name) for name in names})
        return out


def materialise(module: nn.Module, tensors: dict[str, torch.Tensor], device, dtype=None) -> None:
    """Put `tensors` ({name relative to module: tensor}) into `module` on `device`, replacing meta tensors."""
    from accelerate.utils import set_module_tensor_to_device

    for name, value in tensors.items():
        set_module_tensor_to_device(module, name, device, value=value, dtype=dtype)


def tensor_bytes(directory) -> dict[str, int]:
    """Bytes each tensor occupies in the directory's *.safetensors files (from their headers)."""
    sizes = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                sizes[name] = end - begin
    return sizes
