"""ops.reconstruct / admm_prune / alps_prune against literal ports of the official code, the exact
least-squares optimum on the support, and every input check."""
import numpy as np
import pytest
import torch
from torch import nn

from sparsekit import ops

dev = "cpu"  # the official codes hard-code 'cuda:0'


# ---------------------------------------------------------------------------------------------
# Literal reference 1: fmfi-compbio/admm-pruning@8039208 lib/admm.py AdmmPruner.fasterprune, with
# its prints removed, the Hessian passed in (self.XX) and its CPU `torch.zeros(WT.shape, ...)` kept.
# ---------------------------------------------------------------------------------------------
class AdmmPruner:

    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        self.rows = layer.weight.shape[0]
        self.columns = layer.weight.shape[1]
        self.XX = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0

    def fasterprune(
        self, sparsity, prune_n=0, prune_m=0, percdamp=.1, iterative_prune=15, iters=20, per_out=False
    ):
        XX = self.XX
        norm = torch.diag(XX).sqrt() + 1e-8
        XX = XX / norm
        XX = (XX.T / norm).T
        W = (self.layer.weight.float().detach() * norm).T

        rho0 = percdamp * torch.diag(XX).mean()
        diag = torch.arange(XX.shape[0], device=XX.device)
        XX[diag,diag] += rho0

        if iterative_prune == 0:
            if prune_n != 0:
                WT = W.T.reshape((W.shape[1]*W.shape[0]//4, 4)).abs()
                mask = torch.zeros_like(WT)
                sort_inds = WT.sort(dim=1)[1]
                mask[torch.arange(WT.shape[0]), sort_inds[:,2]] = 1
                mask[torch.arange(WT.shape[0]), sort_inds[:,3]] = 1
                mask = mask.reshape(W.T.shape).T
            elif per_out:
                thres = (W).abs().sort(dim=0)[0][int(W.shape[0] * sparsity)]
                mask = ((W).abs() >= thres.unsqueeze(0))
                del thres
            else:
                topk = torch.topk(W.abs().flatten(), k=int(W.numel() * sparsity), largest=False)
                mask = torch.ones(W.numel(), dtype=torch.bool, device=W.device)
                mask[topk.indices] = 0
                mask = mask.reshape(W.shape)
                del topk

        if iters == 0:
            Z = (W) * mask
            out = (Z.T / norm)
            self.layer.weight.data = out.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
            return

        rho = 1

        XY = XX.matmul(W)
        XX[diag,diag] += rho
        XXinv = torch.inverse(XX)
        self.XX = None
        del XX
        U = torch.zeros_like(W)

        for itt in range(iters):
            if iterative_prune > 0 and itt < iterative_prune:
                if prune_n != 0:
                    sparsity = 0.5
                    cur_sparsity = sparsity - sparsity * (1 - (itt + 1) / iterative_prune) ** 3
                    WT = (W+U).T.reshape((W.shape[1]*W.shape[0]//4, 4)).abs()
                    mask = torch.zeros(WT.shape, dtype=torch.bool)
                    sort_inds = WT.sort(dim=1)[1]
                    mask[torch.arange(WT.shape[0]), sort_inds[:,2]] = 1
                    mask[torch.arange(WT.shape[0]), sort_inds[:,3]] = 1
                    mask = mask.reshape(W.T.shape).T

                    Z2 = (W+U).abs()
                    Z2[mask] = torch.inf
                    thres = Z2.flatten().kthvalue(int(W.numel() * cur_sparsity)+1)[0]
                    mask = (Z2 >= thres)
                    del thres

                else:
                    cur_sparsity = sparsity - sparsity * (1 - (itt + 1) / iterative_prune) ** 3
                    if per_out:
                        thres = (W+U).abs().sort(dim=0)[0][int(W.shape[0] * cur_sparsity)]
                        mask = ((W+U).abs() >= thres.unsqueeze(0))
                        del thres
                    else:
                        topk = torch.topk((W+U).abs().flatten(), k=int(W.numel() * sparsity), largest=False)
                        mask = torch.ones(W.numel(), dtype=torch.bool, device=W.device)
                        mask[topk.indices] = 0
                        mask = mask.reshape(W.shape)
                        del topk

            Z = (W + U) * mask

            U = U + (W - Z)

            W = XXinv.matmul(XY + rho*(Z-U))

        Z = (W + U) * mask
        out = (Z.T / norm)

        self.layer.weight.data = out.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)


# ---------------------------------------------------------------------------------------------
# Literal reference 2: mazumder-lab/ALPS@8af9e6b alps.py ALPS_prune.ALPS_admm + cg_batch, with
# 'cuda:0' -> dev, the Hessian passed in (self.XtX), the CUDA synchronize and error printouts removed.
# ---------------------------------------------------------------------------------------------
class ALPS_prune:

    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.XtX = torch.zeros((self.columns, self.columns), device=self.dev).float()

    def ALPS_admm(self, sp, nm_n = 0, nm_m = 0, rho=0.1, max_iter = 300, update_iter = 3, switch_iter = 30):

        # get dense weight
        W = self.layer.weight.data.clone()
        W = W.float()
        W = W.to(dev)
        self.XtX = self.XtX.cpu()

        # ridge term
        damp1 = 0.01 * torch.mean(torch.diag(self.XtX)).item()
        diag = torch.arange(self.XtX.shape[0], device=self.XtX.device)
        self.XtX[diag,diag] += damp1

        # normalization
        X_norm = torch.diag(self.XtX).sqrt() + 1e-8
        self.XtX = self.XtX / X_norm
        self.XtX = (self.XtX.T / X_norm).T

        self.YtX = torch.zeros_like(W)
        self.YtX = torch.matmul(W.cpu() * X_norm,self.XtX).to(dev)

        # initialization
        XTX_inv = torch.zeros_like(self.XtX).float().to(dev)
        B = (W * X_norm.to(dev)).t().clone()
        W = None
        B_orig = B.cpu().clone()
        V = torch.zeros_like(B)
        D = torch.zeros_like(B)
        D_suppp = torch.zeros_like(B)
        D_supp = torch.zeros_like(B)

        totp, num_cout = B.shape
        L, Q = torch.linalg.eigh(self.XtX.double())
        XTX_inv = (Q @ ((1/(L+(rho))) * Q).T).float().to(dev)

        init_rho = False
        fix_supp = False
        D_fix = torch.zeros_like(D)

        params = B.shape[0]*B.shape[1]
        k_spar = int(np.round((1-sp)*params))

        if nm_n == 0:
            D = B.clone().reshape(-1)
            _, loss_idx = torch.topk(-D**2,totp * num_cout - k_spar)
            D[loss_idx] = 0
            D_suppp = (D == 0).to(torch.float)
            D = D.reshape(totp, num_cout)
        else:
            new_dim = totp * num_cout / nm_m
            new_dim = int(new_dim)
            k_spar = totp * num_cout * nm_n/nm_m

            D = B.clone().t().reshape((new_dim, nm_m))
            _, loss_idx = torch.topk(-D**2,nm_m - nm_n, dim = 1)
            D = D.scatter(src=torch.zeros((new_dim,nm_m-nm_n)).to(dev),dim=1,index=loss_idx)
            D_suppp = (D == 0).to(torch.float)
            D = D.reshape(num_cout, totp).t()

        D_init = D.clone()
        for i_admm in range(max_iter):

            B = XTX_inv @ (self.YtX.T-V+rho*D)

            if fix_supp:
                D = ((V + rho * B) / rho) * D_fix
            elif nm_n == 0:
                D = ((V + rho * B) / rho).reshape(-1)
                _, loss_idx = torch.topk(-D**2,totp * num_cout - k_spar)
                D[loss_idx] = 0
                D = D.reshape(totp, num_cout)
            else:
                D = ((V + rho * B) / rho).t().reshape((new_dim, nm_m))
                _, loss_idx = torch.topk(-D**2,nm_m - nm_n, dim = 1)
                D = D.scatter(src=torch.zeros((new_dim,nm_m-nm_n)).to(dev),dim=1,index=loss_idx)
                D_supp = (D == 0).to(torch.float)
                D = D.reshape(num_cout, totp).t()

            V = V + rho * (B - D)

            if (i_admm+1) % update_iter == 0:

                if nm_n == 0:
                    D_supp = (D.reshape(-1) == 0).to(torch.float)
                supp_change = torch.sum((D_supp-D_suppp)**2)

                if not fix_supp:
                    if supp_change / k_spar > 0.1:
                        init_rho = True
                        rho *= 1.3
                    elif supp_change / k_spar > 0.005:
                        init_rho = True
                        rho *= 1.2
                    elif supp_change > 0.5:
                        if init_rho:
                            rho *= 1.1
                        else:
                            rho /= 5
                            B = B_orig.clone().to(dev)
                            D = D_init.clone().to(dev)
                            V = torch.zeros_like(B).to(dev)
                    else:
                        if init_rho:
                            break
                        else:
                            rho /= 5

                D_suppp = (D_supp).clone()
                if rho > 1e6:
                    rho = 1e6

                XTX_inv = (Q @ ((1/(L+(rho))) * Q).T).float().to(dev)

                if nm_n == 0:
                    Btest = B.reshape(-1)
                    _, loss_idx = torch.topk(-Btest**2,totp * num_cout - k_spar)
                    Btest[loss_idx] = 0
                    Btest = Btest.reshape(totp, num_cout)
                else:
                    Btest = B.t().reshape((new_dim, nm_m))
                    _, loss_idx = torch.topk(-Btest**2,nm_m - nm_n, dim = 1)
                    Btest = Btest.scatter(src=torch.zeros((new_dim,nm_m-nm_n)).to(dev),dim=1,index=loss_idx)
                    Btest = Btest.reshape(num_cout, totp).t()

                if i_admm >= switch_iter and supp_change / k_spar < 0.0003:
                    break

        if nm_n == 0:
            B = B.reshape(-1)
            _, loss_idx = torch.topk(-B**2,totp * num_cout - k_spar)
            B[loss_idx] = 0
            B = B.reshape(totp, num_cout)
        else:
            B = B.t().reshape((new_dim, nm_m))
            _, loss_idx = torch.topk(-B**2,nm_m - nm_n, dim = 1)
            B = B.scatter(src=torch.zeros((new_dim,nm_m-nm_n)).to(dev),dim=1,index=loss_idx)
            B = B.reshape(num_cout, totp).t()

        V = None
        D = None

        B = self.cg_batch( (self.XtX).to(dev), self.YtX.T,
                       (B != 0).to(torch.float), M_bmm=None, X0=B, rtol=1e-4, atol=0., maxiter=10, verbose=False)

        self.layer.weight.data = (B.t() / X_norm.to(dev)).reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)

    def cg_batch(self, A, B, A_supp, M_bmm=None, X0=None, rtol=1e-3, atol=0., maxiter=None, verbose=False):
        n, m = B.shape

        if M_bmm is None:
            M_bmm = lambda x: x  # noqa: E731  (literal port of ALPS)
        if X0 is None:
            X0 = M_bmm(B)
        if maxiter is None:
            maxiter = 5 * n

        assert B.shape == (n, m)
        assert X0.shape == (n, m)
        assert rtol > 0 or atol > 0
        assert isinstance(maxiter, int)

        X_k = X0

        R_k = B - A @ X_k
        R_k = R_k * A_supp

        Z_k = M_bmm(R_k)

        P_k = torch.zeros_like(Z_k)

        P_k1 = P_k
        R_k1 = R_k
        R_k2 = R_k
        X_k1 = X0
        Z_k1 = Z_k
        Z_k2 = Z_k

        B_norm = torch.norm(B, dim=1)
        stopping_matrix = torch.max(rtol*B_norm, atol*torch.ones_like(B_norm))

        for k in range(1, maxiter + 1):
            Z_k = M_bmm(R_k)

            if k == 1:
                P_k = Z_k
                R_k1 = R_k
                X_k1 = X_k
                Z_k1 = Z_k
            else:
                R_k2 = R_k1
                Z_k2 = Z_k1
                P_k1 = P_k
                R_k1 = R_k
                Z_k1 = Z_k
                X_k1 = X_k
                denominator = (R_k2 * Z_k2).sum(0)
                denominator[denominator == 0] = 1e-8
                beta = (R_k1 * Z_k1).sum(0) / denominator
                P_k = Z_k1 + beta.unsqueeze(0) * P_k1

            denominator = (P_k * (A@P_k)).sum(0)
            denominator[denominator == 0] = 1e-8
            alpha = (R_k1 * Z_k1).sum(0) / denominator
            X_k = X_k1 + alpha.unsqueeze(0) * P_k
            R_k = R_k1 - alpha.unsqueeze(0) * (A@P_k)
            R_k = R_k * A_supp

            residual_norm = torch.norm(A@X_k - B, dim=1)

            if (residual_norm <= stopping_matrix).all():
                break

        return X_k


def official_alps_on_mask(weight, hessian, keep):
    """ALPS_admm's preamble and final CG step (literal lines), with the given mask as the support."""
    pruner = ALPS_prune(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    XtX = hessian.clone().float()
    damp1 = 0.01 * torch.mean(torch.diag(XtX)).item()
    diag = torch.arange(XtX.shape[0], device=XtX.device)
    XtX[diag,diag] += damp1
    X_norm = torch.diag(XtX).sqrt() + 1e-8
    XtX = XtX / X_norm
    XtX = (XtX.T / X_norm).T
    YtX = torch.matmul(weight.float() * X_norm, XtX)
    B = (weight.float() * X_norm).t().clone() * keep.t()
    B = pruner.cg_batch(XtX, YtX.T, keep.t().to(torch.float), M_bmm=None, X0=B, rtol=1e-4, atol=0., maxiter=10)
    return B.t() / X_norm


# ---------------------------------------------------------------------------------------------
def random_problem(rows, cols, seed=0, tokens=None):
    """A layer and H = X^T X from correlated inputs with a few large-norm features, as LLM activations."""
    g = torch.Generator().manual_seed(seed)
    tokens = tokens or 4 * cols
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))
    X = (torch.randn(tokens, cols, generator=g) @ mix) * scale
    W = torch.randn(rows, cols, generator=g)
    return W, X.T @ X


def objective(W, W_new, H):
    delta = (W.double() - W_new.double())
    return torch.einsum("ij,jk,ik->", delta, H.double(), delta).item()


def run_official_admm(W, H, sparsity, n=0, m=0, **kwargs):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    pruner = AdmmPruner(layer)
    pruner.XX = H.clone()
    pruner.fasterprune(sparsity, prune_n=n, prune_m=m, **kwargs)
    return layer.weight.data


def run_official_alps(W, H, sparsity, n_keep=0, m=0):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    pruner = ALPS_prune(layer)
    pruner.XtX = H.clone()
    pruner.ALPS_admm(sparsity, nm_n=n_keep, nm_m=m)
    return layer.weight.data


def assert_same_result(ours, keep, official, W, H):
    assert torch.equal(keep, official != 0)
    assert torch.equal(ours != 0, keep)
    ref = objective(W, official, H)
    assert abs(objective(W, ours, H) - ref) <= 1e-6 * ref
    torch.testing.assert_close(ours, official, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ admm-pruning literal port
@pytest.mark.parametrize("shape,seed", [((48, 64), 0), ((37, 96), 1)])
@pytest.mark.parametrize("sparsity,per_out,iterative_prune", [
    (0.6, False, 15), (0.5, True, 15), (0.7, False, 0), (0.6, True, 0), (0.6, False, 5),
])
def test_admm_prune_matches_official(shape, seed, sparsity, per_out, iterative_prune):
    W, H = random_problem(*shape, seed=seed)
    official = run_official_admm(W, H, sparsity, per_out=per_out, iterative_prune=iterative_prune)
    ours, keep = ops.admm_prune(W, H, sparsity, per_out=per_out, iterative_prune=iterative_prune)
    assert_same_result(ours, keep, official, W, H)


@pytest.mark.parametrize("shape,seed,iterative_prune", [((48, 64), 0, 15), ((37, 96), 3, 15), ((40, 32), 4, 0)])
def test_admm_prune_24_matches_official(shape, seed, iterative_prune):
    W, H = random_problem(*shape, seed=seed)
    official = run_official_admm(W, H, 0.5, n=2, m=4, iterative_prune=iterative_prune)
    ours, keep = ops.admm_prune(W, H, n=2, m=4, iterative_prune=iterative_prune)
    assert_same_result(ours, keep, official, W, H)
    assert (keep.reshape(-1, 4).sum(1) == 2).all()


def test_admm_prune_generalises_nm_beyond_24():
    W, H = random_problem(24, 64, seed=5)
    _, keep = ops.admm_prune(W, H, n=5, m=8)
    assert (keep.reshape(-1, 8).sum(1) == 3).all()


def test_admm_reconstruct_matches_official_fixed_mask_branch():
    """iterative_prune=0 is 'layer-wise |W d| mask + 20 ADMM steps': our fixed-mask op on that mask agrees."""
    W, H = random_problem(45, 80, seed=6)
    official = run_official_admm(W, H, 0.6, iterative_prune=0)
    d = torch.diag(H).sqrt() + 1e-8
    score = (W * d).T.abs()
    low = torch.topk(score.flatten(), k=int(score.numel() * 0.6), largest=False).indices
    keep_t = torch.ones(score.numel(), dtype=torch.bool)
    keep_t[low] = False
    keep = keep_t.reshape(score.shape).T.contiguous()
    ours = ops.reconstruct(W, keep, H, method="admm")
    assert_same_result(ours, keep, official, W, H)


def test_admm_iters_zero_is_the_mask_only():
    W, H = random_problem(16, 32, seed=7)
    official = run_official_admm(W, H, 0.5, iterative_prune=0, iters=0)
    ours, keep = ops.admm_prune(W, H, 0.5, iterative_prune=0, iters=0)
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)
    assert torch.equal(keep, official != 0)


# -------------------------------------------------------------------------------- ALPS literal port
@pytest.mark.parametrize("shape,seed,sparsity", [((48, 64), 0, 0.6), ((37, 96), 1, 0.7), ((64, 48), 2, 0.5)])
def test_alps_prune_matches_official(shape, seed, sparsity):
    W, H = random_problem(*shape, seed=seed)
    official = run_official_alps(W, H, sparsity)
    ours, keep = ops.alps_prune(W, H, sparsity)
    assert_same_result(ours, keep, official, W, H)


@pytest.mark.parametrize("shape,seed,n,m", [((48, 64), 0, 2, 4), ((37, 96), 1, 2, 4), ((30, 64), 2, 4, 8)])
def test_alps_prune_nm_matches_official(shape, seed, n, m):
    W, H = random_problem(*shape, seed=seed)
    official = run_official_alps(W, H, n / m, n_keep=m - n, m=m)
    ours, keep = ops.alps_prune(W, H, n=n, m=m)
    assert_same_result(ours, keep, official, W, H)
    assert (keep.reshape(-1, m).sum(1) == m - n).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_alps_reconstruct_matches_official_cg_on_a_given_mask(seed):
    W, H = random_problem(41, 72, seed=seed)
    keep = ops.wanda_mask(W, torch.diag(H), 0.6)
    official = official_alps_on_mask(W, H, keep)
    ours = ops.reconstruct(W, keep, H, method="alps")
    assert torch.equal(ours != 0, keep)
    ref = objective(W, official, H)
    assert abs(objective(W, ours, H) - ref) <= 1e-6 * ref


# ---------------------------------------------------------------------- exact optimum on the support
def closed_form(W, keep, A_normalised, d):
    """Per output row: min (b - b0)^T A (b - b0) over b on the row's support, b = w * d."""
    A = A_normalised.double()
    b0 = W.double() * d.double()
    target = b0 @ A  # (A b0) per row, A symmetric
    out = torch.zeros_like(b0)
    for r in range(W.shape[0]):
        S = keep[r].nonzero().flatten()
        out[r, S] = torch.linalg.solve(A[S][:, S], target[r, S])
    return out / d.double()


def normalised(H, damp_before=0.0, damp_after=0.0):
    H = H.double().clone()
    H.diagonal().add_(damp_before * H.diagonal().mean())
    d = H.diagonal().sqrt() + 1e-8
    A = H / d / d[:, None]
    A.diagonal().add_(damp_after * A.diagonal().mean())
    return A, d


@pytest.mark.parametrize("sparsity,n,m", [(0.6, 0, 0), (None, 2, 4)])
def test_alps_reconstruct_converges_to_the_exact_least_squares(sparsity, n, m):
    W, H = random_problem(33, 64, seed=8)
    keep = ops.wanda_mask(W, torch.diag(H), sparsity, n, m)
    exact = closed_form(W, keep, *normalised(H))  # undamped: the true layer objective
    ours = ops.reconstruct(W.double(), keep, H.double(), method="alps", damp=0.0, cg_iters=300, rtol=1e-12)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-8)
    # with the official damping, the optimum of the damped problem
    exact_damped = closed_form(W, keep, *normalised(H, damp_before=0.01))
    ours = ops.reconstruct(W, keep, H, method="alps", cg_iters=300)
    torch.testing.assert_close(ours.double(), exact_damped, rtol=1e-3, atol=1e-4)


def test_admm_reconstruct_converges_to_the_damped_least_squares():
    W, H = random_problem(29, 48, seed=9)
    keep = ops.wanda_mask(W, torch.diag(H), 0.5)
    exact = closed_form(W, keep, *normalised(H, damp_after=0.1))
    ours = ops.reconstruct(W.double(), keep, H.double(), method="admm", iters=2000)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["alps", "admm"])
@pytest.mark.parametrize("pattern", [(0.5, 0, 0), (0.7, 0, 0), (None, 2, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_never_worse_than_the_mask_alone_and_exactly_zero_off_it(method, pattern, seed):
    W, H = random_problem(37, 64, seed=seed)
    keep = ops.wanda_mask(W, torch.diag(H), *pattern)
    updated = ops.reconstruct(W, keep, H, method=method)
    assert (updated[~keep] == 0).all()
    assert objective(W, updated, H) < objective(W, W * keep, H)


def test_more_cg_iterations_reach_a_lower_objective_than_the_official_ten():
    W, H = random_problem(40, 96, seed=10)
    keep = ops.wanda_mask(W, torch.diag(H), 0.6)
    official = objective(W, ops.reconstruct(W, keep, H, method="alps"), H)
    longer = objective(W, ops.reconstruct(W, keep, H, method="alps", cg_iters=100), H)
    assert longer < official


def test_bfloat16_weights_come_back_in_bfloat16_with_the_mask_kept():
    W, H = random_problem(24, 32, seed=11)
    keep = ops.wanda_mask(W, torch.diag(H), 0.5)
    for method in ("alps", "admm"):
        out = ops.reconstruct(W.bfloat16(), keep, H, method=method)
        assert out.dtype == torch.bfloat16 and (out[~keep] == 0).all()
    out, keep = ops.alps_prune(W.bfloat16(), H, 0.5)
    assert out.dtype == torch.bfloat16 and torch.equal(out != 0, keep)


def test_dead_input_features_are_handled():
    W, H = random_problem(16, 32, seed=12)
    H[:, 3] = 0
    H[3, :] = 0
    keep = ops.wanda_mask(W, torch.diag(H), 0.5)
    for method in ("alps", "admm"):
        assert torch.isfinite(ops.reconstruct(W, keep, H, method=method)).all()
    for prune in (ops.alps_prune, ops.admm_prune):
        out, _ = prune(W, H, 0.5)
        assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------- bad inputs
def _ok():
    W, H = random_problem(8, 16, seed=13)
    return W, W.abs() > 0.5, H


@pytest.mark.parametrize("call,error,match", [
    (lambda W, k, H: ops.reconstruct(W, k.float(), H), TypeError, "bool tensor"),
    (lambda W, k, H: ops.reconstruct(W, k[:, :8], H), ValueError, "keep must have shape"),
    (lambda W, k, H: ops.reconstruct(W, k, H[:8, :8]), ValueError, "expected \\(16, 16\\)"),
    (lambda W, k, H: ops.reconstruct(W, k, H, method="obs"), ValueError, "unknown reconstruct method"),
    (lambda W, k, H: ops.reconstruct(W, k, H, method="admm", cg_iters=5), ValueError, "no option"),
    (lambda W, k, H: ops.reconstruct(W, k, H, method="alps", cg_iters=-1), ValueError, "cg_iters must be"),
    (lambda W, k, H: ops.reconstruct(W, k, H, method="admm", rho=0), ValueError, "rho must be"),
    (lambda W, k, H: ops.reconstruct(W, k, H * float("nan")), ValueError, "NaN"),
    (lambda W, k, H: ops.reconstruct(W, k, torch.zeros_like(H)), ValueError, "no positive diagonal"),
    (lambda W, k, H: ops.reconstruct(W[0], k, H), ValueError, "2-D"),
    (lambda W, k, H: ops.reconstruct(W.long(), k, H), TypeError, "floating"),
    (lambda W, k, H: ops.admm_prune(W, H), ValueError, "pass either sparsity"),
    (lambda W, k, H: ops.admm_prune(W, H, 1.2), ValueError, "sparsity must be in"),
    (lambda W, k, H: ops.admm_prune(W, H, n=2, m=3), ValueError, "divisible by 3"),
    (lambda W, k, H: ops.admm_prune(W, H, 0.5, iterative_prune=30), ValueError, "iterative_prune"),
    (lambda W, k, H: ops.admm_prune(W, H, torch.full((8,), 0.5)), ValueError, "per-row sparsity"),
    (lambda W, k, H: ops.alps_prune(W, H, 0.5, update_iter=0), ValueError, "update_iter must be"),
    (lambda W, k, H: ops.alps_prune(W, H, 0.5, backend="triton"), NotImplementedError, "no triton backend"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(*_ok())



def test_layer_wide_selection_prunes_exactly_the_count_with_tied_values():
    W, H = random_problem(32, 64, seed=15)
    W = (W * 2).round() / 2  # few distinct values: many exact ties at the threshold
    W[W == 0] = 0.5
    out, keep = ops.alps_prune(W, H, 0.6)
    assert (~keep).sum().item() == W.numel() - round(W.numel() * 0.4)
    out, keep = ops.admm_prune(W, H, 0.6)
    assert (~keep).sum().item() == int(W.numel() * 0.6)
