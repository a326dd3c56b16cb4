"""Absorb a layer's input permutation into the layers that produce its input, where that is exact.

In a LLaMA-style MLP, down_proj reads h = act(gate(x)) * up(x): elementwise in the intermediate features,
so with down's input permutation p, h[p] = act(gate_p(x)) * up_p(x) where gate_p / up_p have their output
rows (and bias) permuted by p. Then down needs no gather at all: it stores W_down[:, p] (2:4 along its
stored columns) and reads h[p] as it comes. GPT-2's MLP (c_fc -> act -> c_proj) is the same with one
producer. q/k/v and gate/up read the residual stream after a norm, so their permutation stays in the kernel.

Found by structure, not by names: a module whose direct Linear-like children are a consumer C with an input
permutation and producers P (out_features == C.in_features, in_features == C.out_features), and whose
forward(x) on a random probe gives the same output (to fp32 rounding) when P's rows and C's columns are
permuted by C's permutation, with P and C all called in that forward. The probe runs on fp32 copies of the
module; anything it cannot run (attention needs position arguments), or that differs (the intermediate is
not elementwise, or scaled per feature), keeps its permutation in the kernel.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from sparsekit.hf.layers import LayerView

# The probe runs in float32 whatever the model's dtype: in bf16/fp16 rounding (~0.4% / 0.05% per element)
# would hide a non-elementwise detail of about that size (a per-feature scale or bias on the intermediate
# that keeps the old order). In fp32 an exact absorption only reorders the consumer's K-term sum, which
# moves each output by about sqrt(K) * 2**-24 of its size (~1e-5 at K = 16384); anything that changes the
# function by 0.1% or more shows up 10x above this tolerance (relative to the largest output).
_PROBE_TOLERANCE = 1e-4


@dataclass
class Absorption:
    """Consumer `consumer` (full name) gets its input permuted by `perm` from `producers`."""

    consumer: str
    producers: list[str]
    perm: torch.Tensor


def _float_copy(parent: nn.Module) -> nn.Module:
    return copy.deepcopy(parent).float().eval()


def _permute_rows_and_columns(twin: nn.Module, consumer: str, producers: list[str], perm: torch.Tensor) -> None:
    children = dict(twin.named_children())
    with torch.no_grad():
        for name in producers:
            view = LayerView(name, children[name])
            p = perm.to(view.weight.device)
            view.set_weight(view.weight[p])
            bias = getattr(children[name], "bias", None)
            if bias is not None:
                bias.copy_(bias[p])
        view = LayerView(consumer, children[consumer])
        view.set_weight(view.weight[:, perm.to(view.weight.device)])


def _run_recording_calls(module: nn.Module, names: list[str], x: torch.Tensor) -> tuple[object, set[str]]:
    """module(x) and which of its children `names` ran in that forward."""
    called: set[str] = set()
    children = dict(module.named_children())
    hooks = [children[name].register_forward_hook(lambda *_, name=name: called.add(name)) for name in names]
    try:
        return module(x), called
    finally:
        for hook in hooks:
            hook.remove()


def _probe_equal(parent: nn.Module, children: dict[str, nn.Module], consumer: str, producers: list[str],
                 perm: torch.Tensor) -> bool:
    """Whether `parent`'s forward is unchanged (in fp32) with the producers' rows and the consumer's columns
    permuted, and every producer and the consumer ran in it (a child the forward never calls proves nothing)."""
    weight = LayerView(consumer, children[consumer]).weight
    if weight.is_meta:
        return False
    names = [consumer, *producers]
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")  # TF32 would round like bf16 and fail every probe
        original, twin = _float_copy(parent), _float_copy(parent)
        _permute_rows_and_columns(twin, consumer, producers, perm)
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(1, 3, weight.shape[0], generator=g).to(device=weight.device)
        with torch.no_grad():
            expected, called_original = _run_recording_calls(original, names, x)
            got, called_twin = _run_recording_calls(twin, names, x)
    except torch.OutOfMemoryError:
        raise
    except (TypeError, ValueError, RuntimeError):  # a module that needs more than x (attention) is not a candidate
        return False
    finally:
        torch.set_float32_matmul_precision(precision)
    if called_original != set(names) or called_twin != set(names):
        return False
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor) or expected.shape != got.shape:
        return False
    scale = expected.abs().max().item()
    error = (expected - got).abs().max().item()
    return error <= _PROBE_TOLERANCE * max(scale, 1e-6)


def find_absorptions(model: nn.Module, perms: dict[str, torch.Tensor], eligible: set[str]) -> list[Absorption]:
    """The exact absorptions among `eligible` layers (full names); `perms`: layer -> its input permutation.

    A producer must be eligible too (it becomes a SparseLinear24 holding out_order) and must not feed two
    consumers; a consumer whose producers are not all eligible keeps its permutation.
    """
    found, taken = [], set()
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = {name: module for name, module in parent.named_children()
                    if f"{prefix}{name}" in eligible}
        if len(children) < 2 or parent is model:
            continue
        for consumer, module in children.items():
            perm = perms.get(f"{prefix}{consumer}")
            if perm is None:
                continue
            out_f, in_f = LayerView(consumer, module).weight.shape
            producers = [name for name, other in children.items() if name != consumer
                         and tuple(LayerView(name, other).weight.shape) == (in_f, out_f)]
            if not producers or any(f"{prefix}{name}" in taken for name in producers):
                continue
            if _probe_equal(parent, children, consumer, producers, perm):
                taken.update(f"{prefix}{name}" for name in producers)
                found.append(Absorption(f"{prefix}{consumer}", [f"{prefix}{name}" for name in producers], perm))
    return found
