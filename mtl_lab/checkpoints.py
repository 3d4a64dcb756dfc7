"""Saving, loading and stacking networks; checkpoints are validated with clear errors."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtl_lab.errors import CheckpointError
from mtl_lab.models import NETWORKS, SharedTrunkNetwork

FORMAT = "mtl-lab-network/1"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_network(net: SharedTrunkNetwork, path: str | Path, **extra: Any) -> None:
    """Save a network's kind, shapes and weights (on CPU) plus any ``extra`` metadata."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "kind": net.kind, "spec": net.spec(), "state_dict": state}
    atomic_torch_save({**payload, "extra": extra}, Path(path))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint's payload without building the network."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"corrupt checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mtl-lab network checkpoint ({FORMAT})")
    if payload.get("kind") not in NETWORKS:
        raise CheckpointError(f"{path}: unknown network kind {payload.get('kind')!r}")
    return payload


def load_network(path: str | Path) -> tuple[SharedTrunkNetwork, dict[str, Any]]:
    """Rebuild a saved network; returns (network, extra metadata)."""
    payload = read_checkpoint(path)
    spec = dict(payload["spec"])
    k = spec.pop("ensemble_size")
    net = NETWORKS[payload["kind"]](**spec, seeds=[0] * k)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"corrupt checkpoint {path}: weights do not match: {err}") from err
    return net, payload.get("extra", {})


@torch.no_grad()
def stack_networks(nets: Sequence[SharedTrunkNetwork]) -> SharedTrunkNetwork:
    """One ensemble whose members are the members of ``nets``, in order."""
    if len(nets) == 1:
        return nets[0]
    specs = {repr({k: v for k, v in n.spec().items() if k != "ensemble_size"}) for n in nets}
    if len(specs) != 1:
        raise ValueError("can only stack networks of identical shapes and tasks")
    stacked = nets[0].select_members([0])
    for name, p in stacked.named_parameters():
        p.data = torch.cat([n.get_parameter(name).data for n in nets])
    return stacked
