"""The gradient-trained regimes (SCIENCE.md §1) as recipes over the same network and engine.

* STL — a fresh network trained on the main task only;
* MTL — one shared trunk, heads 'aux' and 'main', trained jointly (per-sample, equal or fixed
  task weighting);
* PT+FT — pretrain on 'aux', keep the trunk, rescale it by c, add a fresh 'main' head of scale γ,
  train trunk and head on the main task;
* PT+LP — as PT+FT but only the new head trains (a linear probe on frozen features).

Which heads a network has, which train and under what name a fit logs come from the regime's
:class:`~mtl_lab.regime_specs.RegimeSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_lab.data import counts, split_term
from mtl_lab.engine import task_weights
from mtl_lab.models import SharedTrunkNetwork
from mtl_lab.regime_specs import REGIME_SPECS, RegimeSpec
from mtl_lab.regimes.base import (
    GroupContext,
    Member,
    MemberResult,
    build_network,
    fit,
    test_loss,
)
from mtl_lab.regimes.pretrain import pretrained_for


def _results(net: SharedTrunkNetwork, members: Sequence[Member], summaries: list[dict],
             histories: list, extra: list[dict] | None = None) -> list[MemberResult]:
    datas = [m.data for m in members]
    tests = {t: test_loss(net, datas, t) for t in ("aux", "main")if t in net.tasks}
    out = []
    for k in range(len(members)):
        metrics = dict(summaries[k])
        for task in ("aux", "main"):
            metrics[f"test_loss_{task}"] = tests[task][k] if task in tests else float("nan")
        if extra:
            metrics.update(extra[k])
        out.append(MemberResult(metrics, net.select_members([k]), histories[k]))
    return out


def _lrs(members: Sequence[Member]) -> torch.Tensor:
    return torch.tensor([m.lr for m in members])


def trainable(spec: RegimeSpec, finetune_train: str = "all") -> list[str]:
    """What a regime's main fit updates: the trunk and its fresh heads (``trains == "all"``,
    unless ``finetune.train`` restricts a finetuning regime to its head) or the fresh heads
    only."""
    heads = list(spec.fresh_heads)
    if spec.trains == "all" and (finetune_train == "all" or not spec.finetunes):
        return ["trunk", *heads]
    return heads


def train_stl(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """STL: L = (1/n_main) Σ_i (f_main(x_i) − y_i)² on a fresh network."""
    spec = REGIME_SPECS["stl"]
    datas = [m.data for m in members]
    net = build_network(ctx.cfg.model, datas[0].in_dim, spec.heads, [m.seed for m in members])
    term = split_term(datas, "main_train", "main", 1.0 / counts(datas, "main_train"))
    net, summ, hist = fit(net, [term], trainable(spec), _lrs(members), ctx.cfg.training,
                          ctx, spec.name)
    return _results(net, members, summ, hist)


def train_mtl(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """MTL: L = Σ_t Σ_i c_t (f_t(x_i) − y_i)² with the configured task weighting c_t."""
    spec = REGIME_SPECS["mtl"]
    datas = [m.data for m in members]
    net = build_network(ctx.cfg.model, datas[0].in_dim, spec.heads, [m.seed for m in members])
    n = {t: counts(datas, f"{t}_train") for t in spec.tasks}
    w = task_weights(n, ctx.cfg.mtl.weighting, ctx.cfg.mtl.engine_options())
    terms = [split_term(datas, f"{t}_train", t, w[t]) for t in spec.tasks]
    net, summ, hist = fit(net, terms, trainable(spec), _lrs(members), ctx.cfg.training,
                          ctx, spec.name)
    return _results(net, members, summ, hist)


def finetune_start(members: Sequence[Member], ctx: GroupContext
                   ) -> tuple[SharedTrunkNetwork, list[dict]]:
    """Pretrained trunks (one per member) × c, with a fresh main head of scale γ."""
    net, pt_summaries = pretrained_for(members, ctx)
    before = neuron_balances(net)
    prepare_finetune(net, [m.rescale for m in members], [m.head_init_scale for m in members],
                     [m.seed for m in members], ctx.cfg.finetune.rescaling)
    after = neuron_balances(net)
    if before is not None:  # the conserved h_j before the rescaling and where finetuning starts
        for summary, h0, h1 in zip(pt_summaries, before, after, strict=True):
            summary.update(h_abs_mean_pretrained=float(h0.abs().mean()),
                           h_abs_max_pretrained=float(h0.abs().max()),
                           h_abs_mean_start=float(h1.abs().mean()),
                           h_abs_max_start=float(h1.abs().max()))
    return net, pt_summaries


def neuron_balances(net: SharedTrunkNetwork) -> list[torch.Tensor] | None:
    """Per member, h_j = ‖in_j‖² − ‖out_j‖² of every hidden neuron of a ReLU network (all heads
    count as outgoing weights; SCIENCE.md §6); None for other networks."""
    from mtl_lab.models import ReLUNetwork
    from mtl_lab.modules.trunks import network_parts
    from mtl_lab.symmetry import neuron_balance

    if not isinstance(net, ReLUNetwork):
        return None
    return [neuron_balance(*network_parts(net, k)) for k in range(net.ensemble_size)]


def prepare_finetune(net: SharedTrunkNetwork, rescale: Sequence[float],
                     head_scale: Sequence[float], seeds: Sequence[int],
                     rescaling: str = "none") -> None:
    """Per member, in place: the pretrained network rescaled neuron by neuron (``rescaling``:
    ``enorm`` or ``path_conditioned``, function-preserving, against the pretrained heads), then
    θ_trunk ← c·θ_trunk and a fresh main head of scale γ."""
    if rescaling != "none":
        rescale_members(net, rescaling)
    net.rescale_trunk(torch.tensor(rescale, dtype=torch.float32))
    net.add_head("main", torch.tensor(head_scale, dtype=torch.float32), seeds)


def rescale_members(net: SharedTrunkNetwork, method: str) -> None:
    """Apply a :mod:`mtl_lab.symmetry` rescaling to every member of a ReLU network (in place):
    each member as a plain trunk and heads, rescaled in float64, written back."""
    from mtl_lab.modules.trunks import network_parts, set_network_parts
    from mtl_lab.symmetry import Rescaling

    spec = Rescaling(method)
    for k in range(net.ensemble_size):
        trunk, heads = network_parts(net, k)
        spec(trunk, heads)
        set_network_parts(net, k, trunk, heads)


def _train_finetune(members: Sequence[Member], ctx: GroupContext, spec: RegimeSpec
                    ) -> list[MemberResult]:
    datas = [m.data for m in members]
    net, pt = finetune_start(members, ctx)
    term = split_term(datas, "main_train", "main", 1.0 / counts(datas, "main_train"))
    net, summ, hist = fit(net, [term], trainable(spec, ctx.cfg.finetune.train), _lrs(members),
                          ctx.cfg.training, ctx, spec.name)
    return _results(net, members, summ, hist, pt)


def train_ptft(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """PT+FT: finetune trunk and new head (or the head only, if finetune.train = head)."""
    return _train_finetune(members, ctx, REGIME_SPECS["ptft"])


def train_ptlp(members: Sequence[Member], ctx: GroupContext) -> list[MemberResult]:
    """PT+LP: only the new main head trains, on the frozen pretrained (rescaled) trunk."""
    return _train_finetune(members, ctx, REGIME_SPECS["ptlp"])
