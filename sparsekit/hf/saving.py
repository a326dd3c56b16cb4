"""Save a pruned model as a complete HF checkpoint: dense safetensors with zeros + sparsekit.json.

Dense-with-zeros is the format every tool and serving engine reads; `sparsekit.json` records how it
was pruned. The write goes to a temp dir swapped into place (sparsekit._io.output_dir), so a killed run
never leaves a half-written checkpoint, and a directory sparsekit did not write is never replaced
without overwrite=True.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sparsekit._version import __version__
from sparsekit._io import atomic_write_json, output_dir


def protected_inputs(model=None, checkpoint_dir=None, **more) -> dict:
    """The paths an output directory must never contain: the model's own directory, the run checkpoint, more."""
    paths = {}
    source = str(getattr(model, "name_or_path", "") or "")
    if source and Path(source).exists():
        paths["the model"] = source
    if checkpoint_dir:
        paths["the checkpoint directory"] = str(checkpoint_dir)
    paths.update({k: v for k, v in more.items() if v})
    return paths


def save_pruned(model, tokenizer, out_dir, report=None, extra: dict | None = None,
                checkpoint_dir=None, *, overwrite: bool = False, protect: dict | None = None) -> Path:
    """Write the pruned model; a disk-offloaded model (blocks on meta) is assembled from the run's
    `checkpoint_dir`, one safetensors shard per block, without ever holding it in memory.
    `report` is the run's sparsekit.pipeline.report.PruneReport (its method, pattern, sparsity and
    per-layer sparsities go into sparsekit.json); hf sits below the pipeline, so it is not imported here.

    `out_dir` may be new, empty or a previous sparsekit output; anything else is refused unless
    overwrite=True, and a directory holding the model, the checkpoint or the working directory
    (or a path in `protect`, name -> path) is always refused (sparsekit._io.check_output_dir).
    """
    from sparsekit.nn import SparseLinear24

    if any(isinstance(m, SparseLinear24) for m in model.modules()):
        raise ValueError("the model holds SparseLinear24 layers: save it with sparsekit.save_pretrained(model, dir, tokenizer) "
                         "(compressed) or format='dense' (plain HF checkpoint)")
    if any(p.is_meta for p in model.parameters()) and checkpoint_dir is None:
        raise ValueError("the model's blocks are offloaded to disk: pass the run's checkpoint_dir to save it")
    guarded = {**protected_inputs(model, checkpoint_dir), **(protect or {})}
    with output_dir(out_dir, overwrite=overwrite, protect=guarded, flag="save directory") as tmp:
        if any(p.is_meta for p in model.parameters()):
            _save_streamed(model, Path(checkpoint_dir), tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {"sparsekit_version": __version__, "format": "dense"}
        if report is not None:
            meta.update(
                method=report.method,
                pattern=report.pattern,
                sparsity=report.sparsity,
                layers={r.name: r.reached for r in report.layers},
            )
        meta.update(extra or {})
        atomic_write_json(tmp / "sparsekit.json", meta, sort_keys=True)
    return Path(os.path.abspath(out_dir))


def _save_streamed(model, checkpoint_dir: Path, out: Path) -> None:
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
        with safe_open(checkpoint_dir / "blocks" / f"{index:05d}.safetensors", framework="pt") as fh:
            tensors = {f"{block_path}.{index}.{k}": fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(out / shard(index + 1)), metadata={"format": "pt"})
        weight_map.update({k: shard(index + 1) for k in tensors})
        size += sum(t.numel() * t.element_size() for t in tensors.values())
    index_json = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
