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


def save_pruned(model, tokenizer, out_dir, report: PruneReport | None = None, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    tmp = atomic_dir(out_dir)
    try:
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
