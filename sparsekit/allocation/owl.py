"""OWL (Yin et al., arXiv 2310.05175): outlier-weighted layer-wise sparsity.

Pass over the dense model (dense activations feed every block), as luuyin/OWL `prune_wanda_outlier`:
  D_b   = share of the Wanda scores |W_ij| * ||X_j|| of all target layers of block b, pooled, that
          exceed M * their mean (M = 5);
  dens_b = (D_b - min D) / (max D - min D) * 2 * lambda - mean(...) + (1 - S)    (lambda = 0.08),
so densities span a 2*lambda-wide range (in [1 - S - 2 lambda, 1 - S + 2 lambda]) and block
sparsities 1 - dens_b average exactly S. "Average" is the mean over blocks in the official code; here
it is the parameter-weighted mean, which is the same thing when all blocks hold the same number of
target weights (every LLaMA-style model) and keeps the overall sparsity at S when they do not.
Every target layer of block b gets sparsity 1 - dens_b; the per-row counts are then rounded
(largest remainder, one count per layer) so the whole model prunes round(S * weights) weights,
to within the smallest layer's row count.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch

from sparsekit import ops
from sparsekit.allocation.budget import apportion, budget_count, exact_fraction
from sparsekit.hf.layers import select_layers
from sparsekit.options import option
from sparsekit.pipeline.block import BlockContext, walk_blocks
from sparsekit.pipeline.capture import BlockInputs
from sparsekit.pipeline.report import PhaseTimer

log = logging.getLogger(__name__)


@dataclass
class OWLOptions:
    """m: outlier threshold (a score is an outlier above m * mean); lam: half-width of the density spread."""

    m: float = option(5.0, "OWL: a Wanda score above M x mean is an outlier (default 5)")
    lam: float = option(0.08, "OWL: block densities spread over 2 x lambda (default 0.08)", flag="lambda")

    def __post_init__(self):
        if not isinstance(self.m, (int, float)) or not self.m > 0:
            raise ValueError(f"OWL's m (outlier threshold, --owl-m) must be > 0, got {self.m!r}")
        if not isinstance(self.lam, (int, float)) or not 0 <= self.lam < 0.5:
            raise ValueError(f"OWL's lam (--owl-lambda) must be in [0, 0.5), got {self.lam!r}")


OPTIONS = OWLOptions


def outlier_ratio(scores, m: float) -> float:
    """Fraction of the pooled scores above m * their mean (OWL's D_l; the official code reports percent).

    `scores`: a list of tensors, or a function returning a fresh iterable of them (recomputed on the
    second pass instead of being held in memory).
    """
    fresh = scores if callable(scores) else (lambda: scores)
    total, pooled = 0, 0.0
    for s in fresh():
        total += s.numel()
        pooled += s.double().sum().item()
    threshold = m * pooled / total
    return sum((s > threshold).sum().item() for s in fresh()) / total


def owl_sparsities(ratios, sparsity: float, lam: float, sizes=None) -> list[float]:
    """Block sparsities from outlier ratios by OWL's formula; their (size-weighted) mean is `sparsity`."""
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    density = torch.zeros_like(d) if spread == 0 else (d - d.min()) / spread * (2 * lam)
    density = density - density.mean() + (1 - sparsity)
    result = 1 - density
    if sizes is not None:
        n = torch.tensor(sizes, dtype=torch.float64)
        result = result + (sparsity - (n * result).sum() / n.sum())
    bad = [(i, v) for i, v in enumerate(result.tolist()) if not 0 <= v < 1]
    if bad:
        i, v = bad[0]
        raise ValueError(f"OWL with sparsity {sparsity} and lambda {lam} gives block {i} a sparsity of {v:.4f}, "
                         "outside [0, 1); lower --owl-lambda")
    return result.tolist()


def exact_layer_sparsities(layers: list[tuple[str, int, int, float]], overall: float) -> dict[str, float]:
    """{name: sparsity} for (name, rows, cols, wanted sparsity) so that per-row counts meet round(overall * weights)."""
    rows = torch.tensor([r for _, r, _, _ in layers])
    cols = torch.tensor([c for _, _, c, _ in layers])
    wanted = torch.tensor([s for *_, s in layers], dtype=torch.float64)
    budget = budget_count((rows * cols).tolist(), [overall] * len(layers))
    counts = apportion(wanted * cols, rows, budget, cols - 1)
    return {name: exact_fraction(int(k), int(c), int(r)) for (name, r, c, _), k in zip(layers, counts)}


def _wanda_score(view, stats, backend) -> torch.Tensor:
    return ops.wanda_score(view.weight, stats[view.name].activations.sq_norm.to(view.weight.device), backend=backend)


@torch.no_grad()
def allocate(config, blocks, block_path: str, inputs: BlockInputs, device, placement) -> dict[str, float]:
    """{layer name: sparsity} for every target layer (see the module docstring); `inputs` stay untouched."""
    options = OWLOptions(**config.allocation_options)
    dense = BlockInputs(inputs.hidden.clone(), inputs.batch_size, inputs.extras)
    timer = PhaseTimer(defaultdict(float))
    ratios, sizes, block_layers = [], [], []

    def measure(index, block):
        views = select_layers(block, f"{block_path}.{index}", config.targets, config.ignore)
        if views:
            stats = BlockContext(block, index, views, {}, dense, device, timer, config.backend).collect_stats(
                activations=True, hessian=False)
            ratios.append(outlier_ratio(lambda: (_wanda_score(v, stats, config.backend) for v in views), options.m))
            sizes.append(sum(v.weight.numel() for v in views))
            block_layers.append([(v.name, v.out_features, v.in_features) for v in views])

    walk_blocks(blocks, placement, dense, device, measure)
    if not ratios:
        raise ValueError("OWL found no target layers in any block; check targets / ignore")
    block_sparsity = owl_sparsities(ratios, config.sparsity, options.lam, sizes)
    log.info("OWL outlier ratios (%%): %s", [round(100 * r, 3) for r in ratios])
    log.info("OWL block sparsities: %s", [round(s, 4) for s in block_sparsity])
    layers = [(name, r, c, s) for s, views in zip(block_sparsity, block_layers) for name, r, c in views]
    return exact_layer_sparsities(layers, config.sparsity)
