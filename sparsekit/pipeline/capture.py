"""Capture what the model feeds its blocks: block-0 hidden states and every block's extra arguments.

The exact kwargs the parent model passes (position embeddings, masks, position ids …) are recorded
instead of rebuilt, so any architecture and transformers version works, including models that give
different blocks different masks or rotary tables. Recording runs the embedding once per batch and
skips the blocks' computation (each block returns its input unchanged while recording).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class _StopForward(Exception):
    pass


def block_output(out) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first element of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class BlockInputs:
    """Calibration inputs of the current block: hidden states (nsamples, seqlen, hidden) in batches."""

    hidden: torch.Tensor
    batch_size: int
    # batch size -> per-block (extra positional args, kwargs), recorded from the model itself
    extras: dict[int, list[tuple[tuple, dict]]] = field(default_factory=dict)
    returns_tuple: bool = False  # whether the model's blocks return a tuple (else a tensor)

    def batches(self):
        for start in range(0, self.hidden.shape[0], self.batch_size):
            yield start, self.hidden[start:start + self.batch_size]

    def call_block(self, block: nn.Module, index: int, x: torch.Tensor, device) -> torch.Tensor:
        args, kwargs = self.extras[x.shape[0]][index]
        args = tuple(_to(a, device) for a in args)
        kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        return block_output(block(x.to(device), *args, **kwargs))


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


@torch.no_grad()
def capture_inputs(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int,
                   device, store_device=None, pin: bool = False) -> BlockInputs:
    """Run the model on `input_ids` (nsamples, seqlen) and record the inputs of every block.

    Block 0's hidden states are stored on `store_device` (default: `device`; `pin` pins a CPU
    store for fast copies); the non-block modules and block 0 must already sit on `device`.
    """
    store_device = store_device or device
    nsamples = input_ids.shape[0]
    hidden = None
    extras: dict[int, list] = {}
    state = {"start": 0, "bs": 0, "record": False, "container": None}
    last = len(blocks) - 1

    def make_forward(index, original):
        def forward(*args, **kwargs):
            nonlocal hidden
            x = args[0] if args else kwargs.pop("hidden_states")
            args = args[1:]
            if index == 0:
                if hidden is None:
                    hidden = torch.empty((nsamples, *x.shape[1:]), dtype=x.dtype, device=store_device,
                                         pin_memory=pin and torch.device(store_device).type == "cpu")
                hidden[state["start"]:state["start"] + x.shape[0]] = x.to(store_device)
                if state["container"] is None:  # learn what a block returns from one real call
                    state["container"] = type(original(x, *args, **kwargs))
            if state["record"]:
                extras[state["bs"]].append((_detach(args), _detach(kwargs)))
            if not state["record"] or index == last:
                raise _StopForward
            return (x,) if state["container"] in (tuple, list) else x
        return forward

    with _patched_forwards(blocks, make_forward):
        for start in range(0, nsamples, batch_size):
            batch = input_ids[start:start + batch_size].to(device)
            state.update(start=start, bs=batch.shape[0], record=batch.shape[0] not in extras)
            if state["record"]:
                extras[batch.shape[0]] = []
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    for bs, per_block in extras.items():
        if len(per_block) != len(blocks):
            raise RuntimeError(
                f"the model called {len(per_block)} of its {len(blocks)} blocks in a forward pass; "
                "sparsekit needs every block to run once per forward"
            )
    return BlockInputs(hidden, batch_size, extras, returns_tuple=state["container"] in (tuple, list))


@torch.no_grad()
def forward_from_last_block(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor,
                            last_hidden: torch.Tensor, returns_tuple: bool):
    """The model's output (e.g. logits) when its last block outputs `last_hidden`.

    Runs the model's own forward with every block short-circuited (earlier blocks pass their input
    through, the last returns `last_hidden`), so whatever follows the blocks (final norm, lm_head,
    logit soft-capping …) is computed by the model's own code, for any architecture, without
    touching the blocks' weights (they may be offloaded).
    """
    last = len(blocks) - 1

    def make_forward(index, original):
        def forward(*args, **kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            out = last_hidden.to(x.device, x.dtype) if index == last else x
            return (out,) if returns_tuple else out
        return forward

    with _patched_forwards(blocks, make_forward):
        return model(input_ids=input_ids, use_cache=False)


@contextmanager
def _patched_forwards(blocks: nn.ModuleList, make_forward):
    """Temporarily replace each block's forward with make_forward(index, original_forward).

    A forward the instance already had (e.g. an accelerate hook's) is put back afterwards.
    """
    had_own = ["forward" in b.__dict__ for b in blocks]
    originals = [b.forward for b in blocks]
    for index, (block, original) in enumerate(zip(blocks, originals)):
        block.forward = make_forward(index, original)
    try:
        yield
    finally:
        for block, original, own in zip(blocks, originals, had_own):
            if own:
                block.forward = original
            else:
                del block.forward
