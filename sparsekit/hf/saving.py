"""Save a pruned model as a complete HF checkpoint: dense safetensors with zeros + sparsekit.json.

Dense-with-zeros is the format every tool and serving engine reads; `sparsekit.json` records how it
was pruned. The write goes to a temp dir renamed into place, so a killed run never leaves a
half-written checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from sparsekit import __version__
from sparsekit.data.cache import atomic_dir, commit_dir
from sparsekit.pipeline.report import PruneReport


def save_pruned(model, tokenizer, out_dir, report: PruneReport | None = None, extra: dict | None = None,
                checkpoint_dir=None) -> Path:
    """Write the pruned model; a disk-offloaded model (blocks on meta) is assembled from the run's
    `checkpoint_dir`, one safetensors shard per block, without ever holding it in memory."""
    from sparsekit.nn import SparseLinear24

    if any(isinstance(m, SparseLinear24) for m in model.modules()):
        raise ValueError("the model holds SparseLinear24 layers: save it with sparsekit.save_pretrained(model, dir, tokenizer) "
                         "(compressed) or format='dense' (plain HF checkpoint)")
    out_dir = Path(out_dir)
    tmp = atomic_dir(out_dir)
    try:
        if any(p.is_meta for p in model.parameters()):
            if checkpoint_dir is None:
                raise ValueError("the model's blocks are offloaded to disk: pass the run's checkpoint_dir to save it")
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
        (tmp / "sparsekit.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        commit_dir(tmp, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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
