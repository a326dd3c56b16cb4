"""Checks that can run before the model is loaded or calibration is captured, each failing with the fix.

The model structure is read from config.json alone (a meta-device skeleton, no weights), so a wrong
target, pattern, sequence length or architecture is reported in a second instead of after the load.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from pathlib import Path

# architectures whose heads are not next-token prediction (encoders)
_ENCODER_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                  "ForPreTraining", "ForNextSentencePrediction", "ForMultipleChoice")


def check_regexes(entries, what: str) -> None:
    """Every "re:<regex>" entry compiles."""
    for entry in entries or ():
        if isinstance(entry, str) and entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ValueError(f"{what} entry {entry!r} is not a valid regular expression ({exc}); "
                                 "fix it, e.g. 're:.*mlp.*'") from None


def check_device(device) -> None:
    """A CUDA device is requested only where one exists."""
    import torch

    if device is None:
        return
    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but this machine has no usable CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device cpu")
    if kind == "cuda" and ":" in str(device):
        index = int(str(device).split(":")[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device} but only {torch.cuda.device_count()} CUDA device(s) exist; use cuda:0")
    if kind not in ("cpu", "cuda", "meta", "mps", "xpu"):
        raise ValueError(f"unknown --device {device!r}; use cpu or cuda")


def check_positive(value, flag: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


def check_text_source(source: str, flag: str) -> None:
    """A text source exists and has the expected form: 'wikipedia', hf:<...> (datasets installed), a file."""
    if source == "wikipedia":
        return
    if source.startswith("hf:"):
        if importlib.util.find_spec("datasets") is None:
            raise ValueError(f"{flag} {source} needs the `datasets` package: pip install datasets (or pass a .txt/.jsonl file)")
        return
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"{flag} {source} is a directory; pass a .txt or .jsonl file (one JSON object with a \"text\" field per line)")
    if not path.exists():
        raise ValueError(f"{flag} {source!r} is neither 'wikipedia', an existing file, nor 'hf:<dataset>:<split>'")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ValueError(f"{flag} {source} line {number} is not valid JSON; each line must be an object "
                                     "like {\"text\": \"...\"}") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{flag} {source} line {number} has no string \"text\" field; each line must be an "
                                     "object like {\"text\": \"...\"}")


def check_safetensors_files(directory) -> None:
    """Every *.safetensors file has a readable header whose tensors fit in the file (catches truncation)."""
    for path in sorted(Path(directory).glob("*.safetensors")):
        size = path.stat().st_size
        problem = None
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                problem = "shorter than a safetensors header"
            else:
                (length,) = struct.unpack("<Q", head)
                if length > size - 8:
                    problem = f"its header claims {length} bytes but the file has {size}"
                else:
                    try:
                        header = json.loads(fh.read(length))
                        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                    except (ValueError, KeyError, TypeError, IndexError):
                        problem = "its header is not valid safetensors JSON"
                    else:
                        if 8 + length + end > size:
                            problem = f"it is truncated: the tensors need {8 + length + end} bytes, the file has {size}"
        if problem:
            raise ValueError(f"{path} is not a complete safetensors file ({problem}); re-download or re-save the checkpoint")


def check_causal_decoder(config) -> None:
    """Refuse encoder-only and encoder-decoder models in one line."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    kind = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{kind} is an encoder-decoder model; sparsekit prunes decoder-only causal language models "
                         "(Llama, Mistral, Qwen, GPT-2, OPT, ...)")
    architectures = getattr(config, "architectures", None) or []
    if (architectures and all(a.endswith(_ENCODER_HEADS) or a.endswith("Model") and "LMHead" not in a for a in architectures)
            and not getattr(config, "is_decoder", False)):
        raise ValueError(f"{kind} ({', '.join(architectures)}) is an encoder-only model; sparsekit prunes decoder-only "
                         "causal language models (Llama, Mistral, Qwen, GPT-2, OPT, ...)")
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"{kind} has no causal language-model class in transformers; sparsekit prunes decoder-only "
                         "causal language models (Llama, Mistral, Qwen, GPT-2, OPT, ...)")


def max_positions(config) -> int | None:
    """The longest sequence the model accepts, when its config says (rotary models may extrapolate; this is the trained one)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seqlen(seqlen, config, flag: str) -> None:
    if seqlen is None:
        return
    if not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"{flag} must be at least 2 tokens, got {seqlen!r}")
    limit = max_positions(config)
    if limit is not None and seqlen > limit:
        raise ValueError(f"{flag} {seqlen} exceeds the model's {limit} positions; use {flag} {min(limit, 2048)} or less")


def skeleton_from_config(config, trust_remote_code: bool = False):
    """The model built on the meta device from its config: structure and shapes, no weights, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = type(config).from_dict(config.to_dict())  # a copy: from_config may edit it
    for key in ("quantization_config", "compression_config"):
        if hasattr(config, key):
            delattr(config, key)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_layer_selection(model, targets, ignore, *, n: int = 0, m: int = 0, blocks_path: str | None = None) -> int:
    """Targets/ignore select at least one layer of the blocks, and an N:M pattern's m divides every selected width."""
    from sparsekit.hf.blocks import find_blocks
    from sparsekit.hf.layers import select_layers

    block_path, blocks = find_blocks(model, blocks_path)
    selected = [v for i, b in enumerate(blocks) for v in select_layers(b, f"{block_path}.{i}", targets, ignore)]
    if not selected:
        examples = [f"{block_path}.0.{rel} ({type(mod).__name__})" for rel, mod in blocks[0].named_modules()
                    if rel and not list(mod.children())][:6]
        raise ValueError(f"--targets {' '.join(targets)} / --ignore {' '.join(ignore)} select no layer of the model; "
                         f"its block layers are e.g. {', '.join(examples)}. Use class names (Linear) or 're:<regex>' over "
                         "these names")
    if m:
        bad = [f"{v.name} ({v.in_features} inputs)" for v in selected if v.in_features % m]
        if bad:
            raise ValueError(f"the {n}:{m} pattern needs every pruned layer's input width divisible by {m}, but "
                             f"{len(bad)} are not: {', '.join(bad[:4])}; choose another M or add them to --ignore")
    return len(selected)


def looks_like_path(spec: str) -> bool:
    """A model spec the user meant as a local path (never sent to a hub)."""
    return (os.path.isabs(spec) or spec.startswith((".", "~")) or spec.endswith(("/", ".safetensors", ".gguf", ".json"))
            or spec.count("/") != 1 or os.sep in spec and not re.fullmatch(r"[\w.-]+/[\w.-]+", spec))


def check_checkpoint(checkpoint: str, trust_remote_code: bool = False):
    """A local checkpoint directory: complete safetensors files and a decoder-only causal LM config. Returns the config."""
    from transformers import AutoConfig

    if not Path(checkpoint).is_dir():
        return None
    check_safetensors_files(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    check_causal_decoder(config)
    return config


def check_loading_info(info: dict, checkpoint: str, allow_missing: bool) -> None:
    """Refuse a model some of whose weights were not in the checkpoint (transformers initialises them randomly)."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(k[0]) if isinstance(k, (tuple, list)) else str(k) for k in info.get("mismatched_keys") or []]
    if mismatched:
        raise ValueError(f"{checkpoint} has tensors whose shapes do not match its config.json: {mismatched[:5]}; "
                         "the checkpoint does not match its config")
    if missing and not allow_missing:
        raise ValueError(f"{checkpoint} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}; they would be "
                         "random. Use a complete checkpoint, or pass --allow-missing (allow_missing=True) to accept that")


def default_seqlen(config) -> int:
    """min(2048, the model's positions)."""
    return min(2048, max_positions(config) or 2048)


def check_finite_perplexity(summary: dict) -> None:
    """A NaN/inf perplexity means the model is broken (or the dtype overflowed): fail instead of reporting it."""
    import math

    bad = {k: summary[k] for k in ("dense_ppl", "pruned_ppl", "ppl") if k in summary and not math.isfinite(summary[k])}
    if bad:
        raise ValueError(f"perplexity is not finite ({', '.join(f'{k}={v}' for k, v in bad.items())}): the model produces "
                         "non-finite logits; try --dtype float32, check the checkpoint, or a lower sparsity")
