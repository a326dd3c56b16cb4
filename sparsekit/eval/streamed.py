"""Perplexity of a model whose blocks do not fit in memory: stream the blocks one at a time.

The evaluation windows pass through block 0, then block 1, … (each brought in by a placement and
dropped after), exactly like the pruning pipeline; the model's own head turns the last block's
output into logits (`forward_from_last_block`). Same numbers as `perplexity`, any model size.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from sparsekit.eval.perplexity import eval_windows, next_token_nll
from sparsekit.hf.blocks import find_blocks
from sparsekit.pipeline.capture import capture_inputs, forward_from_last_block
from sparsekit.pipeline.placement import Placement, non_block_modules, on_device


@torch.no_grad()
def perplexity_streamed(model, tokenizer, text_or_dataset, placement: Placement, seqlen: int = 2048,
                        batch_size: int = 1, max_windows: int | None = None, device="cpu",
                        activations_device=None, add_bos="auto") -> float:
    device = torch.device(device)
    ids = eval_windows(tokenizer, text_or_dataset, seqlen, max_windows, add_bos)
    _, blocks = find_blocks(model)
    with on_device(non_block_modules(model, blocks), device):
        placement.onload(0, blocks[0])
        try:
            inputs = capture_inputs(model, blocks, ids, batch_size, device, store_device=activations_device or device)
        finally:
            placement.offload(0, blocks[0])
        for index, block in enumerate(tqdm(blocks, desc="perplexity (streamed)", unit="block", leave=False)):
            placement.onload(index, block)
            try:
                for start, x in inputs.batches():
                    out = inputs.call_block(block, index, x, device)
                    inputs.hidden[start:start + out.shape[0]] = out.to(inputs.hidden.device)
            finally:
                placement.offload(index, block)
        nll, count = 0.0, 0
        for start, x in inputs.batches():
            batch = ids[start:start + x.shape[0]].to(device)
            logits = forward_from_last_block(model, blocks, batch, x.to(device), inputs.returns_tuple).logits
            batch_nll, batch_count = next_token_nll(logits, batch)
            nll += batch_nll
            count += batch_count
    return math.exp(nll / count)
