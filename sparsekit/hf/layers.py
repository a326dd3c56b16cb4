"""Prunable layers of a block and llm-compressor-style targets / ignore.

A target or ignore entry is a class name ("Linear") or "re:<regex>" matched against the module's
fully qualified name. GPT-2's transformers Conv1D stores its weight as (in, out); `LayerView`
always presents weights as (out, in) so every op sees one layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from sparsekit.nn.conv1d import is_conv1d, is_linear_like, weight_out_in

DEFAULT_TARGETS = ("Linear", "Conv1D")
DEFAULT_IGNORE = ("re:.*lm_head",)


def is_prunable(module: nn.Module) -> bool:
    return is_linear_like(module)


@dataclass
class LayerView:
    """A Linear-like module seen as weight (out, in)."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return is_conv1d(self.module)

    @property
    def weight(self) -> torch.Tensor:
        return weight_out_in(self.module)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def set_weight(self, weight: torch.Tensor) -> None:
        weight = weight.to(device=self.module.weight.device, dtype=self.module.weight.dtype)
        self.module.weight.data.copy_(weight.t() if self.transposed else weight)

    def apply_mask(self, keep: torch.Tensor) -> None:
        keep = keep.to(self.module.weight.device)
        self.module.weight.data.mul_(keep.t() if self.transposed else keep)


def matches(entry: str, name: str, module: nn.Module) -> bool:
    if entry.startswith("re:"):
        return re.fullmatch(entry[3:], name) is not None
    return type(module).__name__ == entry


def select_layers(
    root: nn.Module, prefix: str, targets: Iterable[str] = DEFAULT_TARGETS, ignore: Iterable[str] = DEFAULT_IGNORE
) -> list[LayerView]:
    """Prunable modules under `root` (names prefixed with `prefix`) matching a target and no ignore entry."""
    targets, ignore = list(targets), list(ignore)
    views = []
    for rel, module in root.named_modules():
        if not rel or not is_prunable(module):
            continue
        name = f"{prefix}.{rel}" if prefix else rel
        if any(matches(t, name, module) for t in targets) and not any(matches(i, name, module) for i in ignore):
            views.append(LayerView(name, module))
    return views
