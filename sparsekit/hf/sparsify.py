"""Swap a pruned model's 2:4 Linear layers for SparseLinear24 (in place), and back.

    report = sparsekit.sparsify(model)            # every targeted Linear must be 2:4, else ValueError
    report = sparsekit.sparsify(model, skip_invalid=True)   # keep those dense instead, listed in report.skipped
    print(report.table())

Targets / ignore follow `sparsekit.hf.layers` (class names or "re:<regex>" over module names;
lm_head is ignored by default).

Channel-permuted layers (pruned with permute=True) keep their input permutation, gathered in the 2:4 kernel's
x loads, except where it can be absorbed exactly into the layers producing their input (LLaMA's down_proj:
gate/up rows permuted instead; `sparsekit.hf.absorb`, absorb_permutations=True by default).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from sparsekit.hf.absorb import find_absorptions
from sparsekit.hf.layers import DEFAULT_IGNORE, DEFAULT_TARGETS, select_layers
from sparsekit.nn.sparse_linear import INPUT_PERMUTATION_ATTR, SparseLinear24, why_not_24


@dataclass
class SparsifyReport:
    """What `sparsify` did: layers swapped, layers left dense (with the reason), weight bytes."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    absorbed: list[str] = field(default_factory=list)  # layers whose input permutation moved into their producers
    dense_bytes: int = 0       # dense weights of the swapped layers
    compressed_bytes: int = 0  # values + meta that replace them

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def table(self) -> str:
        lines = [
            f"layers swapped to SparseLinear24: {len(self.swapped)}",
            f"layers kept dense:               {len(self.skipped)}",
            f"input permutations absorbed:     {len(self.absorbed)}",
            f"weight bytes, dense:             {self.dense_bytes:,}",
            f"weight bytes, 2:4 compressed:    {self.compressed_bytes:,} ({self.ratio:.4f}x)",
        ]
        lines += [f"  kept dense: {reason}" for reason in self.skipped.values()]
        return "\n".join(lines)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """data_ptr -> names of every parameter using that storage (tied weights share one)."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if not param.is_meta:
            owners.setdefault(param.data_ptr(), []).append(name)
    return owners


def sparsify(
    model: nn.Module,
    targets: Iterable[str] = DEFAULT_TARGETS,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    *,
    skip_invalid: bool = False,
    backend: str | None = None,
    absorb_permutations: bool = True,
) -> SparsifyReport:
    """Replace every targeted 2:4-pruned Linear of `model` by a SparseLinear24, in place.

    A targeted layer that cannot be compressed (not 2:4, shape not a multiple of 32 x 64, tied to
    another module's weight) raises ValueError naming every such layer, unless `skip_invalid=True`,
    which keeps them dense and lists them in `report.skipped`. Nothing is swapped when it raises.
    absorb_permutations: move input permutations into their producers where exact (see the module docstring).
    """
    report = SparsifyReport()
    owners = _shared_weights(model)
    plan = []
    for view in select_layers(model, "", targets, ignore):
        if isinstance(view.module, SparseLinear24):
            continue
        reason = why_not_24(view.module, view.name, getattr(view.module, INPUT_PERMUTATION_ATTR, None))
        if reason is None:
            tied = [n for n in owners.get(view.module.weight.data_ptr(), []) if n != f"{view.name}.weight"]
            if tied:
                reason = f"layer {view.name!r} weight is tied to {', '.join(tied)}; untie it or add it to ignore"
        if reason is None:
            plan.append(view)
        else:
            report.skipped[view.name] = reason
    if report.skipped and not skip_invalid:
        reasons = list(report.skipped.values())
        listed = "\n  ".join(reasons[:8] + ([f"… and {len(reasons) - 8} more"] if len(reasons) > 8 else []))
        raise ValueError(
            f"{len(report.skipped)} targeted layer(s) cannot be stored 2:4:\n  {listed}\n"
            "Prune them with pattern '2:4', exclude them with ignore=[...], or pass skip_invalid=True to keep them dense"
        )
    perms = {view.name: getattr(view.module, INPUT_PERMUTATION_ATTR, None) for view in plan}
    in_order, out_order = {}, {}
    if absorb_permutations and any(p is not None for p in perms.values()):
        for found in find_absorptions(model, {k: p for k, p in perms.items() if p is not None}, set(perms)):
            in_order[found.consumer] = perms.pop(found.consumer)
            out_order.update(dict.fromkeys(found.producers, found.perm))
            report.absorbed.append(found.consumer)
    for view in plan:
        sparse = SparseLinear24.from_linear(view.module, name=view.name, backend=backend, checked=True,
                                            perm=perms.get(view.name), in_order=in_order.get(view.name),
                                            out_order=out_order.get(view.name))
        report.dense_bytes += sparse.dense_bytes()
        report.compressed_bytes += sparse.compressed_bytes()
        set_submodule(model, view.name, sparse)
        report.swapped.append(view.name)
    return report


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear24]:
    """name -> module of every SparseLinear24 in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear24)}


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every SparseLinear24 of `model` by its dense nn.Linear (weights with zeros), in place."""
    for name in sparse_layers(model):
        set_submodule(model, name, model.get_submodule(name).to_dense())
    return model
