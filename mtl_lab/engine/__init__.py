"""Training engine: objectives, the batched full-batch GD loop, and Lightning recipes."""

from mtl_lab.engine.gd import STATUS_NAMES, FullBatchGD, GDSettings, GDState, max_chunks
from mtl_lab.engine.objective import LossTerm, member_losses, task_weights
from mtl_lab.engine.recipes import FullBatchRecipe, GDProgress, MinibatchRecipe, TicksDataModule

__all__ = [
    "STATUS_NAMES",
    "FullBatchGD",
    "FullBatchRecipe",
    "GDProgress",
    "GDSettings",
    "GDState",
    "LossTerm",
    "MinibatchRecipe",
    "TicksDataModule",
    "max_chunks",
    "member_losses",
    "task_weights",
]
