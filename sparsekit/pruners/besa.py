"""BESA (Xu et al., arXiv 2402.16880): learn each row's (or layer's) sparsity by block reconstruction.

Per transformer block, with its weights frozen:
1. one dense forward gathers the ranking statistics and the dense block's output Y_ref;
2. every row is ranked by an importance score (Wanda |W|*||X|| by default);
3. logits over K candidate sparsities (1.00, 0.99, ..., 0.00) per row or per layer are trained for
   `epochs` passes over the calibration sequences, `train_batch` (1) per step whatever the pipeline's
   forward batch, and for at least `min_steps` (32) steps (Prodigy's step size starts at 1e-6 and needs
   ~10 steps to grow: with the 4 steps that 32 sequences in batches of 8 gave, the allocation stayed at
   its uniform start and BESA returned the metric's masks), each step minimising
       sum(((Y_ref - Y) / sigma)^2) / hidden + beta * ((s_block - s*) / s*)^2
   (sigma: per-channel L2 norm of Y_ref over the batch; s_block: parameter-weighted expected sparsity)
   with the hard mask in the forward pass and the straight-through soft mask in the backward pass
   (`sparsekit.ops.besa_masked_linear`);
4. beyond the paper, the learned row sparsities are projected onto the block's exact budget
   (round(s* x weights), integer counts per row) and the masks are cut either from BESA's own
   ranking or by another in-row method at those per-row sparsities: Wanda, SparseGPT (per-row
   counts, OBS update), or DSnoT swaps starting from BESA's mask (swaps keep each row's count).
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sparsekit import ops
from sparsekit.allocation.budget import budget_count, exact_fraction, project_row_counts
from sparsekit.pipeline.capture import block_output
from sparsekit.ops.besa_masked_linear import expected_sparsity, prune_counts, reachable_sparsity, target_log_prior
from sparsekit.pruners.base import BlockContext, LayerResult, LayerTarget, Pruner, option
from sparsekit.pruners.registry import make_pruner

log = logging.getLogger(__name__)

GRANULARITIES = ("row", "layer")
METRICS = ("wanda", "magnitude", "sparsegpt")
ROW_METHODS = ("besa", "wanda", "sparsegpt", "dsnot")
# DSnoT's options that choose its initial mask and the layers it leaves alone: BESA's dsnot starts from BESA's
# mask in every layer, so they would be ignored
DSNOT_INITIAL_OPTIONS = ("initial", "skip_layer", "skip_sub_layer")
OPTIMIZERS = ("prodigy", "adamw")
INITS = ("target", "uniform")
DEFAULT_LR = {"prodigy": 1.0, "adamw": 1e-2}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    value = str(value).lower()
    if value not in choices:
        raise ValueError(f"besa: {name} must be one of {choices}, got {value!r}")
    return value


@dataclass
class BesaPruner(Pruner):
    granularity: str = option("row", "row (one learned sparsity per output row, the paper's best) or layer")
    metric: str = option("wanda", "row ranking: wanda, magnitude or sparsegpt (w^2 / diag(H^-1))")
    row_method: str = option("besa", "masks at the learned sparsities: besa (its own ranking), wanda, sparsegpt, "
                                      "or dsnot (DSnoT swaps refining besa's mask)")
    epochs: int = option(1, "passes over the calibration sequences per block (paper: 1); more passes run when "
                             "min_steps needs them")
    train_batch: int = option(1, "calibration sequences per training step (paper: 1), whatever the pipeline's "
                                  "--batch-size (which only sets the forward batches)", parse=int)
    min_steps: int = option(32, "at least this many training steps per block: passes over the training sequences "
                                 "repeat until reached (Prodigy grows its step from 1e-6 over ~10 steps; with 4 "
                                 "steps the allocation stays uniform)", parse=int)
    beta: float = option(5.0, "sparsity penalty weight (paper's scripts: 5)")
    optimizer: str = option("prodigy", "prodigy (paper, lr 1) or adamw (lr 1e-2)")
    lr: float | None = option(None, "learning rate (default: 1 for prodigy, 1e-2 for adamw)", parse=float)
    d_coef: float = option(50.0, "Prodigy's d_coef (paper: 5 for 7B/13B row-wise with 128 steps per block; 50 "
                                  "grows the step size faster over the 32 steps of a 32-sequence calibration)")
    sparsity_step: float = option(0.01, "spacing of the candidate sparsities (0.01: 101 candidates)")
    sigmoid: bool = option(True, "p = softmax(sigmoid(logits) + prior), the paper's smoothing: each probability "
                                  "stays within a factor e of the prior's")
    init: str = option("target", "target (a fixed log-prior so that zero logits give the target sparsity; no prior "
                                  "at one half, as the paper) or uniform (no prior: starts at one half)")
    exact: bool = option(True, "project the learned allocation onto the exact budget (off: the paper's floor(s * cols))")
    train_samples: int | None = option(None, "train on the first N calibration sequences only (default: all)", parse=int)
    row_method_options: dict = option({}, "JSON options for row_method: sparsegpt blocksize/percdamp, "
                                           "dsnot mode/max_cycles/...", parse=json.loads)

    needs_activations = True
    supports_distributed = False  # the logits' gradients are not reduced across processes
    takes_update = False  # BESA learns masks on whole blocks (its own prune_block); no per-layer update

    def __post_init__(self):
        self.granularity = _choice("granularity", self.granularity, GRANULARITIES)
        self.metric = _choice("metric", self.metric, METRICS)
        self.row_method = _choice("row_method", self.row_method, ROW_METHODS)
        self.optimizer = _choice("optimizer", self.optimizer, OPTIMIZERS)
        self.init = _choice("init", self.init, INITS)
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"besa: epochs must be an int >= 0 (0 keeps the uniform initial allocation), got {self.epochs!r}")
        if not self.beta >= 0:
            raise ValueError(f"besa: beta must be >= 0, got {self.beta}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"besa: lr must be > 0, got {self.lr}")
        if not self.d_coef > 0:
            raise ValueError(f"besa: d_coef must be > 0, got {self.d_coef}")
        steps = 1.0 / self.sparsity_step if 0 < self.sparsity_step < 1 else 0.0
        if steps < 1 or abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"besa: sparsity_step must divide 1 evenly (e.g. 0.01, 0.02, 0.05), got {self.sparsity_step}")
        self.num_candidates = int(round(steps)) + 1
        for name in ("train_batch", "min_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "train_batch" else 0):
                raise ValueError(f"besa: {name} must be an int >= {1 if name == 'train_batch' else 0}, got {value!r}")
        if self.train_samples is not None and self.train_samples < 1:
            raise ValueError(f"besa: train_samples must be >= 1, got {self.train_samples}")
        if not isinstance(self.row_method_options, dict):
            raise ValueError("besa: row_method_options must be a dict (JSON object on the command line)")
        self.row_pruner = self._make_row_pruner()
        self.learned: dict[str, torch.Tensor] = {}  # layer name -> learned expected sparsity per row
        self.trace: dict[int, list] = {}  # block -> per step (reconstruction, expected sparsity, |grad logits|, prodigy d)
        self.spread: dict[int, dict] = {}  # block -> learned row sparsities' spread before / after the projection

    # -- one block ------------------------------------------------------------------------------
    def prune_block(self, ctx: BlockContext) -> dict[str, LayerResult]:
        for view in ctx.layers:
            if ctx.targets[view.name].m:
                raise ValueError("besa learns unstructured per-row / per-layer sparsity; N:M patterns are not "
                                 "supported (use --pattern unstructured, or wanda/sparsegpt for N:M)")
        row = self.row_pruner
        need_activations = self.metric == "wanda" or (row is not None and row.needs_activations)
        need_hessian = self.metric == "sparsegpt" or (row is not None and row.needs_hessian)
        stats = ctx.collect_stats(activations=need_activations, hessian=need_hessian)
        reference = torch.empty_like(ctx.inputs.hidden)
        with ctx.timer("besa_reference"):
            ctx.forward(store=reference)
        weights = {v.name: v.weight.detach().contiguous() for v in ctx.layers}
        ranks = {v.name: ops.row_ranks(self._score(weights[v.name], stats[v.name], ctx.backend)) for v in ctx.layers}
        sizes = [weights[v.name].numel() for v in ctx.layers]
        target = sum(n * ctx.targets[v.name].sparsity for n, v in zip(sizes, ctx.layers)) / sum(sizes)
        prior = target_log_prior(target, self.num_candidates).to(ctx.device) if self.init == "target" else None
        self._check_reachable(target, prior)
        with ctx.timer("besa_training"):
            logits = self._learn(ctx, weights, ranks, reference, target, prior)
        del reference
        counts = self._counts(ctx, weights, logits, prior, sizes)
        results = {}
        for view in ctx.layers:
            before = ctx.timer.seconds["masks"]
            with ctx.timer("masks"):
                result = self._mask(view, ranks[view.name], counts[view.name], stats[view.name], ctx)
            result.seconds = ctx.timer.seconds["masks"] - before
            results[view.name] = result
        return results

    def _check_reachable(self, target: float, prior) -> None:
        lo, hi = reachable_sparsity(self.num_candidates, self.sigmoid, prior)
        if self.epochs and target > 0 and not lo + 0.005 <= target <= hi - 0.005:
            raise ValueError(f"besa: with sigmoid smoothing and init={self.init!r} a row's expected sparsity stays within "
                             f"[{lo:.3f}, {hi:.3f}], so the block target {target:.3f} cannot be learned; use init='target' "
                             "(--besa-init target) or turn the smoothing off (--no-besa-sigmoid)")

    def _make_row_pruner(self) -> Pruner | None:
        """The in-row method's pruner (None for BESA's own ranking), from row_method_options."""
        if self.row_method == "besa":
            if self.row_method_options:
                raise ValueError(f"besa: row_method 'besa' takes no row_method_options, got {sorted(self.row_method_options)}")
            return None
        ignored = sorted(set(self.row_method_options) & {"update", "update_iters",
                                                         *(DSNOT_INITIAL_OPTIONS if self.row_method == "dsnot" else ())})
        if ignored:
            raise ValueError(f"besa: row_method_options {ignored} do not apply: the in-row method cuts each layer's "
                             "mask at BESA's learned row sparsities (dsnot: from BESA's mask, in every layer), "
                             "without a weight update")
        try:
            return make_pruner(self.row_method, **self.row_method_options)
        except ValueError as exc:
            raise ValueError(f"besa: row_method_options: {exc}") from None

    def _score(self, weight: torch.Tensor, stats, backend) -> torch.Tensor:
        if self.metric == "magnitude":
            return ops.magnitude_score(weight)
        if self.metric == "wanda":
            return ops.wanda_score(weight, stats.activations.sq_norm.to(weight.device))
        return ops.sparsegpt_saliency(weight, stats.hessian.hessian.to(weight.device), 0.01, backend=backend)

    def _learn(self, ctx, weights, ranks, reference, target, prior) -> dict[str, torch.Tensor]:
        rows = {name: w.shape[0] if self.granularity == "row" else 1 for name, w in weights.items()}
        logits = {name: torch.zeros(rows[name], self.num_candidates, device=ctx.device, requires_grad=True) for name in weights}
        if self.epochs == 0 or target == 0:
            return {name: l.detach() for name, l in logits.items()}
        sizes = {name: float(w.numel()) for name, w in weights.items()}
        total = sum(sizes.values())
        optimizer = self._optimizer(list(logits.values()))
        losses = []
        with _frozen(ctx.block), _masked_forwards(ctx, weights, ranks, logits, self.sigmoid, prior), torch.enable_grad():
            for start, x, args, kwargs in self.training_steps(ctx.inputs, ctx.index):
                out = block_output(ctx.block(x.to(ctx.device), *_to_device(args, ctx.device), **_to_device(kwargs, ctx.device)))
                recon = reconstruction_loss(out, reference[start:start + out.shape[0]].to(ctx.device))
                s_block = sum(sizes[n] * expected_sparsity(l, self.sigmoid, prior).mean() for n, l in logits.items()) / total
                loss = recon + self.beta * ((s_block - target) / target) ** 2
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.sqrt(sum(l.grad.float().square().sum() for l in logits.values())).item()
                optimizer.step()
                losses.append((recon.item(), s_block.item(), grad_norm, optimizer.param_groups[0].get("d", float("nan"))))
        if losses:
            log.info("besa block %d: reconstruction %.4g -> %.4g, expected sparsity %.4f (target %.4f), %d steps",
                     ctx.index, losses[0][0], losses[-1][0], losses[-1][1], target, len(losses))
            self.trace[ctx.index] = losses
        return {name: l.detach() for name, l in logits.items()}

    def training_steps(self, inputs, block_index: int) -> list[tuple[int, torch.Tensor, tuple, dict]]:
        """(start, hidden, args, kwargs) per training step: micro-batches of `train_batch` of the first
        `train_samples` sequences, `epochs` passes, repeated until `min_steps` steps."""
        available = inputs.hidden.shape[0] if self.train_samples is None else min(self.train_samples, inputs.hidden.shape[0])
        one_pass = []
        for start, x in inputs.batches():
            args, kwargs = inputs.extras[x.shape[0]][block_index]
            for lo in range(0, min(x.shape[0], available - start), self.train_batch):
                hi = min(lo + self.train_batch, x.shape[0], available - start)
                one_pass.append((start + lo, x[lo:hi], *batch_slice((args, kwargs), lo, hi, x.shape[0])))
        passes = max(self.epochs, -(-self.min_steps // len(one_pass))) if one_pass and self.epochs else 0
        return one_pass * passes

    def _optimizer(self, params):
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        from prodigyopt import Prodigy

        return Prodigy(params, lr=lr, d_coef=self.d_coef, weight_decay=0.0)

    def _counts(self, ctx, weights, logits, prior, sizes) -> dict[str, torch.Tensor]:
        """Per-row prune counts (int64) from the learned logits: exact budget, or the paper's floor(s * cols)."""
        names = list(weights)
        row_sparsity = {n: expected_sparsity(logits[n], self.sigmoid, prior).expand(weights[n].shape[0]).cpu() for n in names}
        self.learned.update(row_sparsity)
        if not self.exact:
            counts = {n: prune_counts(logits[n], *weights[n].shape, self.sigmoid, prior).long().cpu() for n in names}
        else:
            budget = budget_count(sizes, [ctx.targets[v.name].sparsity for v in ctx.layers])
            counts = dict(zip(names, project_row_counts([row_sparsity[n] for n in names], [weights[n].shape[1] for n in names], budget)))
        self._check_spread(ctx.index, torch.cat([row_sparsity[n] for n in names]),
                           torch.cat([counts[n].double() / weights[n].shape[1] for n in names]))
        return counts

    def _check_spread(self, index: int, learned: torch.Tensor, projected: torch.Tensor) -> None:
        """Record the block's allocation spread and warn when training left it (near) uniform: then BESA's
        masks are the metric's (e.g. Wanda's) at the target, whatever the training cost."""
        def spread(s):
            s = s.double()
            return {"min": s.min().item(), "max": s.max().item(), "std": s.std().item() if s.numel() > 1 else 0.0}

        self.spread[index] = {"learned": spread(learned), "projected": spread(projected)}
        width = learned.max().item() - learned.min().item()
        if self.epochs and width < 2 * self.sparsity_step:
            log.warning("besa block %d: the learned %s sparsities stayed uniform (%.4f to %.4f, spread %.2g < %.2g), so "
                        "the masks are the %s metric's at the target; train longer (--besa-min-steps), or raise "
                        "--besa-d-coef / --besa-lr", index, self.granularity, learned.min().item(), learned.max().item(),
                        width, 2 * self.sparsity_step, self.metric)

    def _mask(self, view, ranks, counts, stats, ctx) -> LayerResult:
        """The layer's mask with `counts` (out,) pruned per row: BESA's own ranking, or the in-row method's."""
        counts = counts.to(ranks.device)
        own = LayerResult(ranks >= counts.unsqueeze(1).to(ranks.dtype))
        if self.row_pruner is None:
            return own
        target = LayerTarget(exact_fraction(counts.double(), view.in_features))  # int(cols * s) == count per row
        if self.row_method == "dsnot":  # swaps keep every row's count
            return LayerResult(self.row_pruner.swap(view, stats, target, own, int(ctx.inputs.hidden.shape[1]), ctx.backend))
        return self.row_pruner.prune_layer(view, stats, target, ctx.backend)


def batch_slice(value, lo: int, hi: int, batch: int):
    """The [lo:hi] micro-batch of a block's recorded extra arguments: tensors whose first dim is the batch
    (attention masks, per-sequence rotary tables) are sliced; shared ones (dim 0 of 1, scalars) pass as they are."""
    if isinstance(value, torch.Tensor):
        return value[lo:hi] if batch > 1 and value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(batch_slice(v, lo, hi, batch) for v in value)
    if isinstance(value, dict):
        return {k: batch_slice(v, lo, hi, batch) for k, v in value.items()}
    return value


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def reconstruction_loss(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """sum(((Y_ref - Y) / sigma)^2) / hidden, sigma = per-channel L2 norm of Y_ref over the batch's tokens."""
    reference = reference.float()
    sigma = reference.reshape(-1, reference.shape[-1]).norm(dim=0).clamp_min(1e-6)
    return ((reference - out.float()) / sigma).square().sum() / reference.shape[-1]


@contextmanager
def _frozen(block: torch.nn.Module):
    """No gradients for the block's own parameters while the logits train."""
    flags = [(p, p.requires_grad) for p in block.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _masked_forwards(ctx: BlockContext, weights, ranks, logits, sigmoid: bool, prior):
    """Route each target layer's forward through the BESA masked linear (weights as (out, in))."""
    saved = []
    try:
        for view in ctx.layers:
            module = view.module
            saved.append((module, module.__dict__.get("forward")))

            def forward(x, _w=weights[view.name], _r=ranks[view.name], _l=logits[view.name], _b=module.bias):
                return ops.besa_masked_linear(x, _w, _r, _l, _b, sigmoid=sigmoid, log_prior=prior, backend=ctx.backend)

            module.forward = forward
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous

