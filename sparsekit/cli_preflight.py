"""The CLI's checks of its arguments before the model is loaded (`sparsekit prune`, `eval`, `sparsify`).

They take the parsed argparse namespace and build on the model-level checks of `sparsekit.preflight`;
`check_prune_args` also runs the method's own option checks (sparsekit.pruners), which is why they
live at the CLI's layer and not in `preflight`, which the hf loaders use (architecture.md §1 layers).
"""
from __future__ import annotations

from pathlib import Path

from sparsekit.preflight import (check_checkpoint, check_device, check_layer_selection, check_positive, check_seqlen,
                                 check_text_source, skeleton_from_config)


def check_common(args) -> None:
    check_device(getattr(args, "device", None))
    for flag in ("eval_windows", "eval_batch_size", "nsamples", "batch_size", "zeroshot_limit"):
        if hasattr(args, flag):
            check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    for flag in ("seqlen", "eval_seqlen"):
        value = getattr(args, flag, None)
        if value is not None and value < 2:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 2 tokens, got {value}")


def local_config(args):
    if not Path(args.model).is_dir():
        return None  # an alias, .gguf or hub id: checked after it is fetched
    return check_checkpoint(args.model, getattr(args, "trust_remote_code", False))


def check_prune_args(args, config) -> None:
    """`sparsekit prune`: everything knowable before the model is loaded."""
    from sparsekit.pruners import make_pruner

    check_common(args)
    make_pruner(config.method, **config.method_options)  # the method's own option checks
    check_text_source(args.calib, "--calib")
    if getattr(args, "eval", False):
        check_text_source(args.eval_text, "--eval-text")
    model_config = local_config(args)
    if model_config is not None:
        check_seqlen(args.seqlen, model_config, "--seqlen")
        check_seqlen(args.eval_seqlen, model_config, "--eval-seqlen")
        check_layer_selection(skeleton_from_config(model_config, getattr(args, "trust_remote_code", False)),
                              config.targets, config.ignore, n=config.n, m=config.m, blocks_path=config.blocks)


def check_eval_args(args) -> None:
    """`sparsekit eval` / `sparsify`: everything knowable before the model is loaded."""
    check_common(args)
    if hasattr(args, "eval_text") and not getattr(args, "no_ppl", False):
        check_text_source(args.eval_text, "--eval-text")
    model_config = local_config(args)
    if model_config is not None:
        check_seqlen(getattr(args, "seqlen", None), model_config, "--seqlen")
        check_seqlen(getattr(args, "eval_seqlen", None), model_config, "--eval-seqlen")
