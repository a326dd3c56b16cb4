"""Per-input-feature calibration statistics of one chunk of activations.

For x of shape (B, S, C) (B sequences of S tokens):
    sum_x[c]   = sum_{b,t} x[b,t,c]
    sum_sq[c]  = sum_{b,t} x[b,t,c]^2
    sum_var[c] = sum_b  var_t(x[b,:,c])      (population variance of each sequence)
Accumulated in fp32 whatever x's dtype; the caller merges chunks in fp64.
"""
import torch


def activation_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.float()
    seq_mean = x.mean(dim=1, keepdim=True)
    sum_var = (x - seq_mean).square().mean(dim=1).sum(dim=0)
    return x.sum(dim=(0, 1)), x.square().sum(dim=(0, 1)), sum_var
