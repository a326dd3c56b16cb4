"""Calibration statistics accumulated over chunks of sequences (what Wanda, DSnoT and SparseGPT need)."""
from __future__ import annotations

import torch

from sparsekit import backend as _backend
from sparsekit.checks import check_tensor


def _as_sequences(x: torch.Tensor, in_features: int, name: str) -> torch.Tensor:
    check_tensor(x, name)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[-1] != in_features:
        raise ValueError(f"{name} must have shape (batch, seq, {in_features}) or (seq, {in_features}), got {tuple(x.shape)}")
    return x


class ActivationStats:
    """Per-input-feature statistics of calibration activations.

    `update(x)` takes x of shape (batch, seq, in_features): each batch row is one calibration
    sequence (a 2-D x is one sequence). Chunks are merged in fp64, so several updates give the
    same result as one. With N_seq sequences seen:
      sq_norm = sum_tokens x^2 / N_seq     (Wanda's scaler_row; sqrt gives ||X_j|| up to a constant)
      mean    = sum_tokens x / N_seq       (DSnoT's sum_metric_row)
      var     = mean over sequences of each sequence's population variance (DSnoT's var)
    """

    def __init__(self, in_features: int, *, device=None, backend: str | None = None):
        self.in_features = int(in_features)
        self.backend = backend
        self.nsamples = 0
        self._sum = torch.zeros(self.in_features, dtype=torch.float64, device=device)
        self._sum_sq = torch.zeros_like(self._sum)
        self._sum_var = torch.zeros_like(self._sum)

    def update(self, x: torch.Tensor) -> "ActivationStats":
        return self.add(self.measure(x))

    def measure(self, x: torch.Tensor) -> tuple:
        """One chunk's (sum_x, sum_sq, sum_var, sequences), to `add` to one or more accumulators."""
        x = _as_sequences(x, self.in_features, "activations")
        if x.shape[1] == 0:
            raise ValueError("activations hold no tokens (seq length 0)")
        return (*_backend.call("activation_stats", self.backend, x.device, x), x.shape[0])

    def add(self, measured: tuple) -> "ActivationStats":
        s, sq, var, sequences = measured
        if self._sum.device != s.device:
            self._sum, self._sum_sq, self._sum_var = (t.to(s.device) for t in (self._sum, self._sum_sq, self._sum_var))
        self._sum += s.double()
        self._sum_sq += sq.double()
        self._sum_var += var.double()
        self.nsamples += sequences
        return self

    def _per_sequence(self, total: torch.Tensor) -> torch.Tensor:
        if self.nsamples == 0:
            raise RuntimeError("ActivationStats has seen no calibration sequences; call update(x) first")
        return (total / self.nsamples).float()

    @property
    def sq_norm(self) -> torch.Tensor:
        return self._per_sequence(self._sum_sq)

    @property
    def mean(self) -> torch.Tensor:
        return self._per_sequence(self._sum)

    @property
    def var(self) -> torch.Tensor:
        return self._per_sequence(self._sum_var)

    def state(self) -> dict[str, torch.Tensor]:
        """Raw sums, for merging across processes (all-reduce each, then `load_state`)."""
        n = torch.tensor([float(self.nsamples)], dtype=torch.float64, device=self._sum.device)
        return {"sum": self._sum, "sum_sq": self._sum_sq, "sum_var": self._sum_var, "nsamples": n}

    def load_state(self, state: dict[str, torch.Tensor]) -> "ActivationStats":
        self._sum, self._sum_sq, self._sum_var = state["sum"], state["sum_sq"], state["sum_var"]
        self.nsamples = int(round(state["nsamples"].item()))
        return self


class HessianStats:
    """SparseGPT's H = (2 / N_seq) * sum_tokens x x^T (fp32), chunk products merged in fp64.

    Merging in fp64 makes the result independent of how sequences are grouped into chunks or
    split across processes (up to fp64 rounding), so distributed calibration gives the same masks.
    """

    def __init__(self, in_features: int, *, device=None):
        self.in_features = int(in_features)
        self.nsamples = 0
        self._sum = torch.zeros(self.in_features, self.in_features, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> "HessianStats":
        return self.add(self.measure(x))

    def measure(self, x: torch.Tensor) -> tuple:
        """One chunk's (sum of x x^T in fp32, sequences), to `add` to one or more accumulators."""
        x = _as_sequences(x, self.in_features, "activations")
        flat = x.reshape(-1, self.in_features).float()
        return flat.t() @ flat, x.shape[0]

    def add(self, measured: tuple) -> "HessianStats":
        product, sequences = measured
        if self._sum.device != product.device:
            self._sum = self._sum.to(product.device)
        self._sum += product
        self.nsamples += sequences
        return self

    @property
    def hessian(self) -> torch.Tensor:
        if self.nsamples == 0:
            raise RuntimeError("HessianStats has seen no calibration sequences; call update(x) first")
        return (self._sum * (2.0 / self.nsamples)).float()

    def state(self) -> dict[str, torch.Tensor]:
        n = torch.tensor([float(self.nsamples)], dtype=torch.float64, device=self._sum.device)
        return {"sum": self._sum, "nsamples": n}

    def load_state(self, state: dict[str, torch.Tensor]) -> "HessianStats":
        self._sum = state["sum"]
        self.nsamples = int(round(state["nsamples"].item()))
        return self
