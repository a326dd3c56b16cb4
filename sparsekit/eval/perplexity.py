"""Perplexity over non-overlapping windows (the SparseGPT/Wanda protocol).

The text is tokenised once (no special tokens), cut into windows of seqlen tokens, and
ppl = exp(mean over all predicted tokens of the next-token NLL).

BOS (`sparsekit.eval.bos`): where the tokenizer adds BOS by default (add_bos="auto"), or with
add_bos="yes", every window is [BOS] + seqlen - 1 text tokens, so a BOS-trained model (Gemma, LLaMA)
sees its BOS at position 0 of every window and every text token in the windows is predicted once
(what lm-eval's rolling log-likelihood computes for a document of up to seqlen - 1 tokens: it
conditions the first token on the prefix token). Without BOS a window is seqlen text tokens and its
first token is context only, as in the SparseGPT/Wanda scripts. (Those scripts tokenise with the
tokenizer's defaults, so for a BOS tokenizer their BOS is at the start of the text only, i.e. in
window 0: add_bos="auto" differs from them there; SmolLM2, GPT-2, OPT-style vocabularies without a
default BOS are unaffected.)

A model that does not fit on the device is evaluated with a `placement` (sparsekit.eval.streamed.placement_for):
the windows pass through block 0, then block 1, … (each brought in by the placement and put back after, the
pruning pass's `walk_blocks`), and the model's own head turns the last block's output into logits
(`forward_from_last_block`). Same numbers as the whole-model forward, any model size.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsekit.eval.bos import bos_prefix, resolve_add_bos
from sparsekit.hf.blocks import find_blocks
from sparsekit.pipeline.block import capture_block_inputs, walk_blocks
from sparsekit.pipeline.capture import forward_from_last_block
from sparsekit.pipeline.placement import Placement, non_block_modules, on_device


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
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)


def eval_windows(tokenizer, data, seqlen: int, max_windows: int | None = None, add_bos="auto") -> torch.Tensor:
    """(windows, seqlen) token ids: the non-overlapping windows perplexity is computed on; with BOS
    (add_bos: "auto" = the tokenizer's default, "yes", "no") each window is BOS + seqlen - 1 text tokens.
    A token tensor is taken as text tokens without special tokens."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    prefix = bos_prefix(tokenizer, resolve_add_bos(tokenizer, add_bos))
    ids = _token_ids(tokenizer, data)
    span = seqlen - len(prefix)
    windows = ids.numel() // span
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}"
                         + (" (BOS + seqlen - 1 text tokens)" if prefix else ""))
    text = ids[: windows * span].reshape(windows, span)
    if not prefix:
        return text
    return torch.cat([torch.full((windows, 1), prefix[0], dtype=text.dtype), text], dim=1)


def next_token_nll(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) for logits of `batch`."""
    logits = logits[:, :-1].float()
    targets = batch[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return loss.item(), targets.numel()


@torch.no_grad()
def perplexity(model, tokenizer, text_or_dataset, seqlen: int = 2048, batch_size: int = 1,
               max_windows: int | None = None, device=None, progress: bool = True, add_bos="auto",
               placement: Placement | None = None, activations_device=None) -> float:
    """Perplexity of `model` on non-overlapping `seqlen`-token windows of the text (BOS first in each
    window where the tokenizer adds BOS by default, or add_bos="yes"; never with add_bos="no").

    With a `placement`, the blocks are streamed through `device` one at a time (see the module docstring);
    the windows' hidden states wait on `activations_device` (default: `device`)."""
    ids = eval_windows(tokenizer, text_or_dataset, seqlen, max_windows, add_bos)
    if placement is not None:
        return math.exp(_streamed_nll(model, ids, placement, batch_size, torch.device(device or "cpu"),
                                      activations_device, progress))
    device = device or next(model.parameters()).device
    nll, count = 0.0, 0
    for start in tqdm(range(0, ids.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = ids[start:start + batch_size].to(device)
        batch_nll, batch_count = next_token_nll(model(input_ids=batch, use_cache=False).logits, batch)
        nll += batch_nll
        count += batch_count
    return math.exp(nll / count)


def _streamed_nll(model, ids: torch.Tensor, placement: Placement, batch_size: int, device: torch.device,
                  activations_device, progress: bool) -> float:
    """Mean next-token NLL of `ids` with the blocks run one at a time, each brought to `device` by `placement`."""
    _, blocks = find_blocks(model)
    with on_device(non_block_modules(model, blocks), device):
        inputs = capture_block_inputs(model, blocks, placement, ids, batch_size, device,
                                      store_device=activations_device or device)
        walk_blocks(blocks, placement, inputs, device, forward_last=True,
                    progress=partial(tqdm, desc="perplexity (streamed)", unit="block", leave=False, disable=not progress))
        nll, count = 0.0, 0
        for start, x in inputs.batches():
            batch = ids[start:start + x.shape[0]].to(device)
            logits = forward_from_last_block(model, blocks, batch, x.to(device), inputs.returns_tuple).logits
            batch_nll, batch_count = next_token_nll(logits, batch)
            nll += batch_nll
            count += batch_count
    return nll / count
