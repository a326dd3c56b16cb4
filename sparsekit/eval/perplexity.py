"""Perplexity over non-overlapping windows (the SparseGPT/Wanda protocol).

The text is tokenised once, cut into numel // seqlen windows of seqlen tokens, and
ppl = exp(mean over all predicted tokens of the next-token NLL).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _token_ids(tokenizer, data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.reshape(-1).long()
    if isinstance(data, str):
        text = data
    elif isinstance(data, (list, tuple)):
        text = "\n\n".join(data)
    elif hasattr(data, "column_names"):  # a datasets.Dataset
        column = "text" if "text" in data.column_names else data.column_names[0]
        text = "\n\n".join(data[column])
    else:
        raise TypeError(f"perplexity needs text, a list of texts, a token tensor or an HF dataset, got {type(data).__name__}")
    if not text.strip():
        raise ValueError("evaluation text is empty")
    return tokenizer(text, return_tensors="pt").input_ids[0]


def eval_windows(tokenizer, data, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """(windows, seqlen) token ids: the non-overlapping windows perplexity is computed on."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    ids = _token_ids(tokenizer, data)
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    return ids[: windows * seqlen].reshape(windows, seqlen)


def next_token_nll(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) for logits of `batch`."""
    logits = logits[:, :-1].float()
    targets = batch[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return loss.item(), targets.numel()


@torch.no_grad()
def perplexity(model, tokenizer, text_or_dataset, seqlen: int = 2048, batch_size: int = 1,
               max_windows: int | None = None, device=None, progress: bool = True) -> float:
    """Perplexity of `model` on non-overlapping `seqlen`-token windows of the text."""
    ids = eval_windows(tokenizer, text_or_dataset, seqlen, max_windows)
    device = device or next(model.parameters()).device
    nll, count = 0.0, 0
    for start in tqdm(range(0, ids.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = ids[start:start + batch_size].to(device)
        batch_nll, batch_count = next_token_nll(model(input_ids=batch, use_cache=False).logits, batch)
        nll += batch_nll
        count += batch_count
    return math.exp(nll / count)
