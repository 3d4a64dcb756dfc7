"""Cheap analyzer summaries stored in every results row (the full analysis is
``mtl-lab analyze``): participation ratio of the trunk on probe inputs, ℓ1 path-norm, and the
main task's contribution share on units that carry the auxiliary task (when the network has
both heads)."""

from __future__ import annotations

import contextlib

import torch

from mtl_lab.analysis.features import main_share_on_aux
from mtl_lab.analysis.representation import participation_ratio
from mtl_lab.analysis.symmetry import path_norm
from mtl_lab.models import SharedTrunkNetwork

PROBE_SAMPLES = 512


@torch.no_grad()
def run_summary(net: SharedTrunkNetwork, probe: torch.Tensor) -> dict[str, float]:
    """Summaries of a single trained network (K = 1) on probe inputs (n, d)."""
    out = {"pr": float(participation_ratio(net.features(probe[:PROBE_SAMPLES])[0])),
           "path_norm_l1": float(path_norm(net, q=1.0)[0])}
    if {"aux", "main"} <= set(net.tasks):
        # deeper trunks need probe activity for contributions: left to `mtl-lab analyze`
        with contextlib.suppress(ValueError):
            out["main_share_on_aux"] = float(main_share_on_aux(net)[0])
    return out
