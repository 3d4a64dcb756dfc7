"""Models: a shared trunk and one linear head per task, stacked over an ensemble of K members."""

from mtl_lab.models.base import SharedTrunkNetwork
from mtl_lab.models.diagonal import DiagonalNetwork
from mtl_lab.models.relu import ReLUNetwork

NETWORKS: dict[str, type[SharedTrunkNetwork]] = {"relu": ReLUNetwork, "diagonal": DiagonalNetwork}

__all__ = ["NETWORKS", "DiagonalNetwork", "ReLUNetwork", "SharedTrunkNetwork"]
