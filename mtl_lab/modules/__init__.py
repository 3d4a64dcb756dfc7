"""Lightning-native regimes for any trunk, any data and any number of tasks.

* :class:`MultiTaskModule` — a shared trunk and one head per named task (STL: one task; MTL:
  several), a loss per task, task weighting from a registry (:mod:`.weighting`);
* :class:`FinetuneModule` — PT+FT / PT+LP from a trained module's trunk × c with a fresh head γ;
* batches from any DataLoader or DataModule (:mod:`.batches`), optimisers and schedules from a
  config mapping (:mod:`.optim`), the lab's trunks and the bridge from the engine's networks
  (:mod:`.trunks`).

The batched full-batch engine (:mod:`mtl_lab.engine`) stays the fast path for the synthetic
experiments; on the same data, from the same start, full-batch SGD through these modules reaches
the engine's solution (tested).
"""

from mtl_lab.engine.weighting import WEIGHTINGS, Weighting, make_weighting, register_weighting
from mtl_lab.modules.batches import TaskBatch, split_batch
from mtl_lab.modules.finetune import FinetuneModule, rescale_trunk
from mtl_lab.modules.heads import TaskSpec, linear_head
from mtl_lab.modules.multitask import MultiTaskModule
from mtl_lab.modules.optim import OptimizerSettings
from mtl_lab.modules.trunks import DiagonalTrunk, MLPTrunk, build_trunk, network_parts

__all__ = [
    "WEIGHTINGS",
    "DiagonalTrunk",
    "FinetuneModule",
    "MLPTrunk",
    "MultiTaskModule",
    "OptimizerSettings",
    "TaskBatch",
    "TaskSpec",
    "Weighting",
    "build_trunk",
    "linear_head",
    "make_weighting",
    "network_parts",
    "register_weighting",
    "rescale_trunk",
    "split_batch",
]
