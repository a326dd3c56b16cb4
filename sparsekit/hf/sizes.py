"""Bytes of a sparsified model: SparseLinear24 layers vs their dense weights, in memory and on disk."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from sparsekit.hf.safetensors_io import tensor_bytes
from sparsekit.hf.sparsify import sparse_layers


def checkpoint_bytes(directory) -> int:
    """Total size of the directory's *.safetensors files."""
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


def memory_footprint(model: nn.Module) -> dict:
    """In-memory bytes: the SparseLinear24 layers (values + meta) vs their dense weights, and the whole model."""
    layers = sparse_layers(model)
    compressed = sum(m.compressed_bytes() for m in layers.values())
    dense = sum(m.dense_bytes() for m in layers.values())
    storages = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_meta:
            storages[(t.device, t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
    return {"sparse_layers": len(layers), "compressed_bytes": compressed, "dense_bytes": dense,
            "ratio": compressed / dense if dense else 1.0, "model_bytes": sum(storages.values())}


def size_summary(model: nn.Module, directory=None) -> dict:
    """memory_footprint(model), plus the checkpoint's disk bytes and those of the SparseLinear24 layers' weights."""
    summary = memory_footprint(model)
    if directory is not None:
        layers = sparse_layers(model)
        sizes = tensor_bytes(directory)
        on_disk = sum(size for name, size in sizes.items() if name.rpartition(".")[0] in layers and not name.endswith(".bias"))
        summary.update(disk_bytes=checkpoint_bytes(directory), disk_sparse_layer_bytes=on_disk,
                       disk_ratio=on_disk / summary["dense_bytes"] if summary["dense_bytes"] else 1.0)
    return summary
