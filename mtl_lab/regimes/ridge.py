"""Lazy references (SCIENCE.md §1): ridge regression on frozen pretrained representations.

* LP ridge — features φ(x) = h(x), the pretrained trunk's output;
* NTK ridge — features φ(x) = ∇_θ f_aux(x; θ_pt), the pretrained network's parameter gradients.

Both solve kernel ridge regression with K = Φ Φᵀ: α = (K + λ̃ I)⁻¹ y, f(x) = k(x)ᵀ α, with
λ̃ = λ · tr(K)/n so that the λ grid does not depend on the scale of the features. λ is chosen by
the exact leave-one-out error, e_i = α_i / [(K + λ̃ I)⁻¹]_ii, from one eigendecomposition of K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import functional_call, jacrev

from mtl_lab.models import SharedTrunkNetwork
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.regimes.base import GroupContext, Member, MemberResult
from mtl_lab.regimes.pretrain import pretrained_for


def kernel_ridge_loo(gram: Tensor, y: Tensor, lambdas: Sequence[float]
                     ) -> tuple[float, Tensor, float]:
    """Pick λ by leave-one-out error; returns (λ, dual coefficients α, LOO mean squared error)."""
    gram, y = gram.double(), y.double()
    n = gram.shape[0]
    evals, q = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0.0)
    scale = float(evals.sum()) / n or 1.0
    qy = q.T @ y
    best = (float("inf"), None, None)
    for lam in lambdas:
        inv = 1.0 / (evals + lam * scale)
        alpha = q @ (qy * inv)
        diag = (q * q) @ inv
        loo = float(((alpha / diag) ** 2).mean())
        if loo < best[0]:
            best = (loo, lam, alpha)
    return best[1], best[2], best[0]


def trunk_features(net: SharedTrunkNetwork, x: Tensor) -> Tensor:
    """φ(x) = h(x) of a single network, (n, H)."""
    with torch.no_grad():
        return net.features(x)[0].double()


def gradient_features(net: SharedTrunkNetwork, x: Tensor, task: str = "aux",
                      batch: int = 512) -> Tensor:
    """φ(x) = ∇_θ f_task(x; θ) over trunk and head parameters of a single network, (n, P)."""
    names = [n for n, _ in net.named_parameters()
             if not n.startswith(("heads.", "v_plus.", "v_minus.")) or n.endswith(f".{task}")]
    params = {n: net.get_parameter(n).detach() for n in names}

    def f(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(net, p, (xb, task))[0]

    rows = []
    for s in range(0, len(x), batch):
        jac = jacrev(f)(params, x[s:s + batch])
        rows.append(torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], 1))
    return torch.cat(rows).double()


KERNEL_FEATURES = {"trunk": trunk_features, "gradient": gradient_features}  # RegimeSpec.kernel


def kernel_features(regime: str, net: SharedTrunkNetwork, x: Tensor) -> Tensor:
    """The features φ(x) that a kernel reference's ridge regression uses, for one network."""
    return KERNEL_FEATURES[REGIME_SPECS[regime].kernel](net, x)


def _ridge(members: Sequence[Member], ctx: GroupContext, featurize) -> list[MemberResult]:
    net, pt = pretrained_for(members, ctx)
    out = []
    for k, m in enumerate(members):
        single = net.select_members([k])
        phi = featurize(single, m.data.x["main_train"])
        y = m.data.y["main_train"].double()
        lam, alpha, loo = kernel_ridge_loo(phi @ phi.T, y, ctx.cfg.ridge.lambdas)
        train_pred = (phi @ phi.T) @ alpha
        sq = torch.zeros((), dtype=torch.float64)
        x_test, y_test = m.data.x["main_test"], m.data.y["main_test"].double()
        for s in range(0, len(x_test), 2048):
            pred = featurize(single, x_test[s:s + 2048]) @ (phi.T @ alpha)
            sq += ((pred - y_test[s:s + 2048]) ** 2).sum()
        metrics = {
            "train_loss": float(((train_pred - y) ** 2).mean()),
            "test_loss_main": float(sq) / len(y_test),
            "test_loss_aux": float("nan"),
            "steps": 0,
            "final_lr": float("nan"),
            "restarts": 0,
            "status": "closed_form",
            "ridge_lambda": lam,
            "ridge_loo_error": loo,
            **pt[k],
        }
        out.append(MemberResult(metrics, single))
    return out


def train_lp_ridge(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """LP ridge: kernel ridge on the frozen pretrained trunk features h(x)."""
    return _ridge(members, ctx, KERNEL_FEATURES[REGIME_SPECS["lp_ridge"].kernel])


def train_ntk_ridge(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """NTK ridge: kernel ridge on the pretrained network's parameter gradients ∇_θ f_aux(x)."""
    return _ridge(members, ctx, KERNEL_FEATURES[REGIME_SPECS["ntk_ridge"].kernel])
