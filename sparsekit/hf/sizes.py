"""Bytes of a sparsified model: SparseLinear24 layers vs their dense weights, in memory and on disk; and
`sparsify_and_save`, sparsify + save + measure in one call (what `sparsekit sparsify` and `prune --save-format` run)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS
from sparsekit.hf.safetensors_io import tensor_bytes
from sparsekit.hf.saving import save
from sparsekit.hf.sparsify import sparse_layers, sparsify


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


def sparsify_and_save(model, tokenizer, out_dir, *, format: str = "sparsekit", targets=DEFAULT_TARGETS,
                      ignore=DEFAULT_IGNORE, skip_invalid: bool = False, extra: dict | None = None,
                      overwrite: bool = False, protect: dict | None = None) -> dict:
    """Swap the 2:4 layers (a no-op for ones already swapped), write `out_dir`, return bytes in memory and on disk."""
    report = sparsify(model, targets, ignore, skip_invalid=skip_invalid)
    save(model, out_dir, tokenizer, format=format, metadata=extra, overwrite=overwrite, protect=protect)
    sizes = size_summary(model, out_dir)
    return {"format": format, "out": str(out_dir), "swapped": len(report.swapped), "kept_dense": report.skipped, **sizes}


def size_table(summary: dict) -> str:
    """Human-readable bytes: SparseLinear24 weights vs their dense equivalent, in memory and on disk."""
    dense = summary["dense_bytes"]
    rows = [
        ("2:4 layers", f"{summary['sparse_layers']} ({summary.get('swapped', 0)} swapped now, {len(summary.get('kept_dense', {}))} kept dense)"),
        ("their weights, dense", f"{dense / 2**20:,.2f} MiB"),
        ("in memory, compressed", f"{summary['compressed_bytes'] / 2**20:,.2f} MiB ({summary['ratio']:.4f}x)"),
    ]
    if "disk_bytes" in summary:
        rows += [("on disk, compressed", f"{summary['disk_sparse_layer_bytes'] / 2**20:,.2f} MiB ({summary['disk_ratio']:.4f}x)"),
                 ("checkpoint files", f"{summary['disk_bytes'] / 2**20:,.2f} MiB")]
    rows.append(("whole model in memory", f"{summary['model_bytes'] / 2**20:,.2f} MiB"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"  kept dense: {reason}" for reason in summary.get("kept_dense", {}).values()]
    return "\n".join(lines)
