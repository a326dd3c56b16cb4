"""BESA's masked linear in plain torch (the CPU path and the reference the Triton kernel is tested against).

Weights of each output row are ranked by importance (rank 0 = least important). A row with prune
count n_i keeps the weights of rank >= n_i: y = x @ (W * H)^T, H_ij = [rank_ij >= n_i].
Backward: grad_x = grad_y @ (W * H), and the logit gradient needs, per row, the sum of
G_ij = (grad_y^T x)_ij * W_ij over the weights in each candidate bucket: with candidate prune
counts tau_k (non-increasing in k), a weight of rank t counts towards every p_k with tau_k <= t, i.e.
k >= bucket(t) = min{k : tau_k <= t}; bins[i, k] = sum_{j: bucket(rank_ij) = k} G_ij.
"""
import torch


def besa_masked_linear_forward(x: torch.Tensor, weight: torch.Tensor, ranks: torch.Tensor,
                               prune_counts: torch.Tensor) -> torch.Tensor:
    """x (tokens, in), weight (out, in), ranks (out, in) int, prune_counts (out,) int -> (tokens, out)."""
    keep = ranks >= prune_counts.to(ranks.device).unsqueeze(1)
    return x @ (weight * keep).to(x.dtype).t()


def besa_masked_linear_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, ranks: torch.Tensor,
                                prune_counts: torch.Tensor, bucket_of_rank: torch.Tensor, num_candidates: int,
                                need_grad_x: bool = True):
    """Returns (grad_x (tokens, in) or None, bins (out, num_candidates) fp32)."""
    grad_x = None
    if need_grad_x:
        keep = ranks >= prune_counts.to(ranks.device).unsqueeze(1)
        grad_x = grad_y @ (weight * keep).to(grad_y.dtype)
    g = (grad_y.t() @ x).float() * weight.float()  # the matmul accumulates in fp32 on every backend torch has
    buckets = bucket_of_rank[ranks.long()].long()
    bins = torch.zeros(weight.shape[0], num_candidates, dtype=torch.float32, device=weight.device)
    bins.scatter_add_(1, buckets, g)
    return grad_x, bins
