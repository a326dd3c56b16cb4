"""Sparsify + save + measure in one call: what `sparsekit sparsify` and `sparsekit prune --save-format` run."""
from __future__ import annotations

from sparsekit.hf.compressed import save_pretrained
from sparsekit.hf.sizes import size_summary
from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS
from sparsekit.hf.sparsify import sparsify


def sparsify_and_save(model, tokenizer, out_dir, *, format: str = "sparsekit", targets=DEFAULT_TARGETS,
                      ignore=DEFAULT_IGNORE, skip_invalid: bool = False, extra: dict | None = None,
                      overwrite: bool = False, protect: dict | None = None) -> dict:
    """Swap the 2:4 layers (a no-op for ones already swapped), write `out_dir`, return bytes in memory and on disk."""
    report = sparsify(model, targets, ignore, skip_invalid=skip_invalid)
    save_pretrained(model, out_dir, tokenizer, format=format, extra=extra, overwrite=overwrite, protect=protect)
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
