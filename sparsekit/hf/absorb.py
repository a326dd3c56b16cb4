"""Absorb a layer's input permutation into the layers that produce its input, where that is exact.

In a LLaMA-style MLP, down_proj reads h = act(gate(x)) * up(x): elementwise in the intermediate features,
so with down's input permutation p, h[p] = act(gate_p(x)) * up_p(x) where gate_p / up_p have their output
rows (and bias) permuted by p. Then down needs no gather at all: it stores W_down[:, p] (2:4 along its
stored columns) and reads h[p] as it comes. GPT-2's MLP (c_fc -> act -> c_proj) is the same with one
producer. q/k/v and gate/up read the residual stream after a norm, so their permutation stays in the kernel.

Found by structure, not by names: a module whose direct Linear-like children are a consumer C with an input
permutation and producers P (out_features == C.in_features, in_features == C.out_features), and whose
forward(x) on a random probe gives the same output (to rounding) when P's rows and C's columns are permuted
by C's permutation. The probe runs on a copy of the module; anything it cannot run (attention needs position
arguments), or that differs (the intermediate is not elementwise), keeps its permutation in the kernel.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from sparsekit.hf.layers import LayerView

# relative max error of the probe (the permuted sum reorders the consumer's reduction: rounding only)
_PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 2e-2, torch.bfloat16: 4e-2}


@dataclass
class Absorption:
    """Consumer `consumer` (full name) gets its input permuted by `perm` from `producers`."""

    consumer: str
    producers: list[str]
    perm: torch.Tensor


def _probe_equal(parent: nn.Module, children: dict[str, nn.Module], consumer: str, producers: list[str],
                 perm: torch.Tensor) -> bool:
    """Whether `parent`'s forward is unchanged with the producers' rows and the consumer's columns permuted."""
    weight = LayerView(consumer, children[consumer]).weight
    if weight.is_meta:
        return False
    twin = copy.deepcopy(parent)
    twin_children = dict(twin.named_children())
    p = perm.to(weight.device)
    with torch.no_grad():
        for name in producers:
            view = LayerView(name, twin_children[name])
            view.set_weight(view.weight[p])
            bias = getattr(twin_children[name], "bias", None)
            if bias is not None:
                bias.copy_(bias[p])
        view = LayerView(consumer, twin_children[consumer])
        view.set_weight(view.weight[:, p])
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(1, 3, weight.shape[0], generator=g).to(device=weight.device, dtype=weight.dtype)
        try:
            expected, got = parent(x), twin(x)
        except Exception:  # noqa: BLE001 - a module that needs more than x (attention) is not a candidate
            return False
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor) or expected.shape != got.shape:
        return False
    scale = expected.abs().max().item()
    error = (expected.float() - got.float()).abs().max().item()
    return error <= _PROBE_TOLERANCE.get(weight.dtype, 1e-2) * max(scale, 1e-6)


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
