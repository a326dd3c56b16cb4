"""`save(model, dir, tokenizer, format=...)`: the one way to write a pruned or sparsified model.

Formats:
- "dense" (default): a complete HF checkpoint with the zeros written out + `sparsekit.json` (how it was
  pruned, from `metadata`), the format every tool and serving engine reads. A model holding SparseLinear24
  layers (after `sparsekit.sparsify`) is written decompressed; a disk-offloaded model (blocks on meta) is
  assembled from the pruning run's block files (`run`), one safetensors shard per block, never held in memory.
- "sparsekit" and "sparse-24-bitmask": compressed 2:4 checkpoints of a sparsified model (sparsekit.hf.compressed).
Every write goes to a temp dir swapped into place (sparsekit._io.output_dir), so a killed run never leaves a
half-written checkpoint, and a directory sparsekit did not write is never replaced without overwrite=True.
`save_pruned` and `save_pretrained` are the older names, kept for their callers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sparsekit._io import atomic_write_json, output_dir, protected_inputs
from sparsekit._version import __version__
from sparsekit.hf.compressed import FORMATS
from sparsekit.hf.compressed import save_pretrained as _save_compressed


def save(model, out_dir, tokenizer=None, *, format: str = "dense", metadata: dict | None = None, run=None,
         overwrite: bool = False, protect: dict | None = None, max_shard_size="5GB") -> Path:
    """Write `model` to `out_dir` in `format` ("dense", "sparsekit" or "sparse-24-bitmask"); returns the absolute path.

    `metadata` (a plain dict) goes into sparsekit.json. `run` is the pruning run whose block files hold a
    disk-offloaded model's blocks: an object with `block_file(index)` (sparsekit.pipeline.checkpoint.RunCheckpoint)
    or its directory. `out_dir` may be new, empty or a previous sparsekit output; anything else is refused unless
    overwrite=True, and a directory holding the model, the run or the working directory (or a path in `protect`,
    name -> path) is always refused (sparsekit._io.check_output_dir).
    """
    from sparsekit.nn import SparseLinear24

    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {FORMATS}")
    if format != "dense" or any(isinstance(m, SparseLinear24) for m in model.modules()):
        return _save_compressed(model, out_dir, tokenizer, format=format, max_shard_size=max_shard_size, extra=metadata,
                                overwrite=overwrite, protect=protect)
    streamed = any(p.is_meta for p in model.parameters())
    if streamed and run is None:
        raise ValueError("the model's blocks are offloaded to disk: pass the run's checkpoint_dir to save it")
    run_dir = getattr(run, "dir", run)
    guarded = {**protected_inputs(model, run_dir), **(protect or {})}
    with output_dir(out_dir, overwrite=overwrite, protect=guarded, flag="save directory") as tmp:
        if streamed:
            _save_streamed(model, _block_files(run), tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "sparsekit.json", {"sparsekit_version": __version__, "format": "dense", **(metadata or {})},
                          sort_keys=True)
    return Path(os.path.abspath(out_dir))


def report_metadata(report=None, extra: dict | None = None) -> dict:
    """sparsekit.json's fields from a PruneReport (method, pattern, sparsity, each layer's reached sparsity) + extra."""
    meta = {}
    if report is not None:
        meta.update(method=report.method, pattern=report.pattern, sparsity=report.sparsity,
                    layers={r.name: r.reached for r in report.layers})
    return {**meta, **(extra or {})}


def save_pruned(model, tokenizer, out_dir, report=None, extra: dict | None = None, checkpoint_dir=None, *,
                overwrite: bool = False, protect: dict | None = None) -> Path:
    """Older name of save(format="dense") taking a PruneReport; it refuses sparsified models as it always did."""
    _refuse_sparsified(model)
    return save(model, out_dir, tokenizer, format="dense", metadata=report_metadata(report, extra), run=checkpoint_dir,
                overwrite=overwrite, protect=protect)


def save_pretrained(model, out_dir, tokenizer=None, *, format: str = "sparsekit", max_shard_size="5GB",
                    extra: dict | None = None, overwrite: bool = False, protect: dict | None = None) -> Path:
    """Older name of save() for sparsified models (default format "sparsekit"; `extra` is the metadata)."""
    return save(model, out_dir, tokenizer, format=format, metadata=extra, overwrite=overwrite, protect=protect,
                max_shard_size=max_shard_size)


def _refuse_sparsified(model) -> None:
    from sparsekit.nn import SparseLinear24

    if any(isinstance(m, SparseLinear24) for m in model.modules()):
        raise ValueError("the model holds SparseLinear24 layers: save it with sparsekit.save(model, dir, tokenizer, "
                         "format='sparsekit') (compressed) or format='dense' (plain HF checkpoint)")


def _block_files(run):
    """index -> the run's file of pruned block `index`: run.block_file, or the layout of a RunCheckpoint directory."""
    if hasattr(run, "block_file"):
        return run.block_file
    return lambda index: Path(run) / "blocks" / f"{index:05d}.safetensors"


def _save_streamed(model, block_file, out: Path) -> None:
    """HF sharded checkpoint: the non-block tensors, then each pruned block's file from the run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sparsekit.hf.blocks import find_blocks

    block_path, blocks = find_blocks(model)
    seen, outside = set(), {}
    for name, tensor in model.state_dict().items():
        if name.startswith(block_path + ".") or tensor.data_ptr() in seen:  # tied copies are re-tied on load
            continue
        seen.add(tensor.data_ptr())
        outside[name] = tensor.contiguous()
    total = len(blocks) + 1
    shard = lambda i: f"model-{i + 1:05d}-of-{total:05d}.safetensors"  # noqa: E731
    weight_map = {name: shard(0) for name in outside}
    save_file(outside, str(out / shard(0)), metadata={"format": "pt"})
    size = sum(t.numel() * t.element_size() for t in outside.values())
    for index in range(len(blocks)):
        with safe_open(block_file(index), framework="pt") as fh:
            tensors = {f"{block_path}.{index}.{k}": fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(out / shard(index + 1)), metadata={"format": "pt"})
        weight_map.update({k: shard(index + 1) for k in tensors})
        size += sum(t.numel() * t.element_size() for t in tensors.values())
    index_json = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
