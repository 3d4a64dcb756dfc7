"""Per-unit feature-reuse tables (SCIENCE.md §5) and the reuse summary between tasks.

ReLU trunks, per hidden unit j of the last trunk layer: incoming norm ‖w_j‖ (bias included),
head weights v_{t,j}, contribution to task t c_{t,j} = |v_{t,j}|·‖w_j‖ (one hidden layer) or
|v_{t,j}|·rms_x h_j(x) (deeper trunks, on probe inputs), cosine between finetuned and pretrained
incoming weights, best cosine with a teacher unit. Diagonal networks, per coordinate d:
β_aux,d, β_main,d, the pretrained magnitude |β_aux,d| and the teacher's coefficients.

Labels (thresholds are :class:`ReuseThresholds`): a unit *carries* task t when
c_{t,j} ≥ used_fraction · max_j c_{t,j}. With the auxiliary reference being the pretrained
network (PT+FT, PT+LP) or the network's own auxiliary head (MTL):

* *unused* — carries no main-task contribution;
* *reused* — carries main and auxiliary contribution, and (PT+FT) its incoming weights kept
  their direction: cos(w_ft, w_pt) ≥ reuse_cosine;
* *modified* — an auxiliary unit that carries main contribution after rotating (cos < reuse_cosine);
* *new* — carries main contribution but no auxiliary contribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from mtl_lab.analysis.weights import unit_changes
from mtl_lab.models import DiagonalNetwork, ReLUNetwork, SharedTrunkNetwork

LABELS = ("reused", "modified", "new", "unused")


@dataclass(frozen=True)
class ReuseThresholds:
    """used_fraction: share of the largest contribution that counts as carrying a task;
    reuse_cosine: cosine to the pretrained incoming weights above which a unit is *reused*."""

    used_fraction: float = 0.05
    reuse_cosine: float = 0.9


DEFAULT_THRESHOLDS = ReuseThresholds()


def incoming_weights(net: ReLUNetwork, member: int | None = 0) -> Tensor:
    """Incoming weights (and bias) of the last trunk layer's units: (H, fan_in [+1]) for one
    member, (K, H, fan_in [+1]) for all when ``member`` is None."""
    w = net.weights[-1].detach()
    if net.biases:
        w = torch.cat([w, net.biases[-1].detach().unsqueeze(2)], dim=2)
    return w if member is None else w[member]


def unit_contributions(net: ReLUNetwork, task: str, member: int = 0,
                       probe: Tensor | None = None) -> Tensor:
    """c_{t,j} = |v_{t,j}|·‖w_j‖ for one hidden layer; |v_{t,j}|·rms_x h_j(x) when deeper."""
    if len(net.weights) == 1:
        return contributions(net, task)[member]
    if probe is None:
        raise ValueError("a deeper trunk needs probe inputs to measure unit activity")
    with torch.no_grad():
        h = net.select_members([member]).features(probe)[0]
    return net.heads[task][member].detach().abs() * h.pow(2).mean(0).sqrt()


def _cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)


def carries(contrib: Tensor, used_fraction: float) -> Tensor:
    """Units that carry a task: c_j ≥ used_fraction · max_j c_j (and max > 0); last dim = units."""
    top = contrib.max(dim=-1, keepdim=True).values
    return (contrib >= used_fraction * top) & (top > 0)


def contributions(net: SharedTrunkNetwork, task: str) -> Tensor:
    """Per member and unit (ReLU, one hidden layer) or coordinate (diagonal): (K, H) or (K, d)."""
    if isinstance(net, DiagonalNetwork):
        return net.beta(task).detach().abs()
    if len(net.weights) != 1:
        raise ValueError("contributions without probe inputs need a one-hidden-layer trunk")
    return net.heads[task].detach().abs() * incoming_weights(net, None).norm(dim=2)


def main_share_on_aux(net: SharedTrunkNetwork,
                      thresholds: ReuseThresholds = DEFAULT_THRESHOLDS) -> Tensor:
    """Per member: Σ_{j carries aux} c_main,j / Σ_j c_main,j with the network's own aux head."""
    main, aux = contributions(net, "main"), contributions(net, "aux")
    on_aux = carries(aux, thresholds.used_fraction)
    return (main * on_aux).sum(-1) / main.sum(-1).clamp_min(1e-30)


def _labels(main: Tensor, aux_ref: Tensor, cosine: Tensor | None,
            th: ReuseThresholds) -> list[str]:
    uses_main = carries(main, th.used_fraction)
    uses_aux = carries(aux_ref, th.used_fraction)
    out = []
    for j in range(len(main)):
        if not uses_main[j]:
            out.append("unused")
        elif uses_aux[j]:
            kept = cosine is None or bool(cosine[j] >= th.reuse_cosine)
            out.append("reused" if kept else "modified")
        else:
            out.append("new")
    return out


def relu_unit_table(net: ReLUNetwork, pretrained: ReLUNetwork | None = None,
                    teacher_units: Tensor | None = None, probe: Tensor | None = None,
                    thresholds: ReuseThresholds = DEFAULT_THRESHOLDS, member: int = 0
                    ) -> pd.DataFrame:
    """One row per last-layer hidden unit of member ``member`` (see the module docstring)."""
    w = incoming_weights(net, member)
    table = {"unit": range(w.shape[0]), "in_norm": w.norm(dim=1)}
    contrib = {}
    for task in net.tasks:
        table[f"head_{task}"] = net.heads[task][member].detach()
        contrib[task] = unit_contributions(net, task, member, probe)
        table[f"contrib_{task}"] = contrib[task]
    cosine = None
    aux_ref = contrib.get("aux", torch.zeros_like(w[:, 0]))
    if pretrained is not None:
        w0 = incoming_weights(pretrained, 0)
        change = unit_changes(w, w0)
        cosine = 1.0 - change["direction_change"]
        table["cos_pretrained"] = cosine
        table["pretrained_in_norm"] = w0.norm(dim=1)
        table["norm_ratio_pretrained"] = change["norm_ratio"]
        aux_ref = unit_contributions(pretrained, "aux", 0, probe)
        table["pretrained_contrib_aux"] = aux_ref
    if teacher_units is not None and len(net.weights) == 1:
        t = teacher_units.to(w)
        cos = _cosine_rows(w[:, : t.shape[1]].unsqueeze(1).expand(-1, len(t), -1),
                           t.unsqueeze(0).expand(len(w), -1, -1))
        table["best_teacher_cos"] = cos.max(dim=1).values
    main = contrib.get("main", torch.zeros_like(w[:, 0]))
    table["label"] = _labels(main, aux_ref, cosine, thresholds)
    return pd.DataFrame({k: (v.cpu().numpy() if isinstance(v, Tensor) else v)
                         for k, v in table.items()})


def diagonal_coordinate_table(net: DiagonalNetwork, pretrained: DiagonalNetwork | None = None,
                              teacher: dict[str, Tensor] | None = None,
                              thresholds: ReuseThresholds = DEFAULT_THRESHOLDS,
                              member: int = 0) -> pd.DataFrame:
    """One row per coordinate d: β_aux,d, β_main,d, pretrained magnitude, teacher, label."""
    with torch.no_grad():
        main = net.beta("main")[member] if "main" in net.tasks else torch.zeros(net.w_plus.shape[1])
        if pretrained is not None:
            aux = pretrained.beta("aux")[0]
        elif "aux" in net.tasks:
            aux = net.beta("aux")[member]
        else:
            aux = torch.zeros_like(main)
    table = {"coordinate": range(len(main)), "beta_aux": aux, "beta_main": main,
             "contrib_aux": aux.abs(), "contrib_main": main.abs()}
    if pretrained is not None:
        table["pretrained_magnitude"] = aux.abs()
    for key, value in (teacher or {}).items():
        table[f"teacher_{key}"] = torch.as_tensor(value)
    table["label"] = _labels(main.abs(), aux.abs(), None, thresholds)
    return pd.DataFrame({k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else v)
                         for k, v in table.items()})


def feature_table(net: SharedTrunkNetwork, pretrained: SharedTrunkNetwork | None = None,
                  teacher: dict | None = None, probe: Tensor | None = None,
                  thresholds: ReuseThresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """The per-unit (ReLU) or per-coordinate (diagonal) table of a single network."""
    if isinstance(net, DiagonalNetwork):
        return diagonal_coordinate_table(net, pretrained, teacher, thresholds)
    units = None
    if teacher is not None and "main_units" in teacher:
        units = torch.as_tensor(teacher["main_units"], dtype=torch.float32)
        if "aux_units" in teacher:
            units = torch.cat([units, torch.as_tensor(teacher["aux_units"], dtype=torch.float32)])
    return relu_unit_table(net, pretrained, units, probe, thresholds)


def reuse_summary(table: pd.DataFrame) -> dict[str, float]:
    """How much of the main task rides on auxiliary features.

    * ``main_share_on_aux`` — Σ_{j carries aux} c_main,j / Σ_j c_main,j;
    * ``contribution_cosine`` — cos(c_aux, c_main) between the two contribution vectors;
    * ``share_<label>`` — the main contribution carried by units of each label.
    """
    main = table["contrib_main"].to_numpy(dtype=float)
    aux_col = "pretrained_contrib_aux" if "pretrained_contrib_aux" in table else "contrib_aux"
    aux = table[aux_col].to_numpy(dtype=float) if aux_col in table else main * 0
    total = main.sum()
    out: dict[str, float] = {}
    for label in LABELS:
        out[f"share_{label}"] = float(main[table["label"] == label].sum() / total) if total else 0.0
    carries_aux = table["label"].isin(["reused", "modified"]).to_numpy()
    out["main_share_on_aux"] = float(main[carries_aux].sum() / total) if total else 0.0
    denom = (aux**2).sum() ** 0.5 * (main**2).sum() ** 0.5
    out["contribution_cosine"] = float((aux * main).sum() / denom) if denom else 0.0
    return out
