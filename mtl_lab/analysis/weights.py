"""Weight change between a network and its reference (SCIENCE.md §5).

Per layer: ‖W − W_ref‖_F / ‖W_ref‖_F. Per unit of the last trunk layer: norm ratio ‖w_j‖/‖w_ref,j‖
and direction change 1 − cos(w_j, w_ref,j). For PT+FT the reference is where finetuning started
(the pretrained trunk times c); for gradient-trained runs from scratch, the initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_lab.models import SharedTrunkNetwork


def relative_change(w: Tensor, ref: Tensor) -> Tensor:
    """‖W − W_ref‖_F / ‖W_ref‖_F over all but the leading (member) dimension, shape (K,)."""
    diff = (w - ref).flatten(1).norm(dim=1)
    return diff / ref.flatten(1).norm(dim=1).clamp_min(1e-30)


def layer_changes(net: SharedTrunkNetwork, ref: SharedTrunkNetwork) -> dict[str, Tensor]:
    """Relative change of every trunk parameter tensor, per member: name -> (K,)."""
    out = {}
    ref_params = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        if name in ref_params and any(p is q for q in net.trunk_parameters()):
            out[name] = relative_change(p.detach(), ref_params[name].detach())
    return out


def unit_changes(w: Tensor, ref: Tensor) -> dict[str, Tensor]:
    """Per unit (rows of w, ref): norm ratio and direction change 1 − cos."""
    cos = torch.nn.functional.cosine_similarity(w, ref, dim=-1, eps=1e-30)
    ratio = w.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
    return {"norm_ratio": ratio, "direction_change": 1.0 - cos}
