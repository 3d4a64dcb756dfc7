"""Optimiser and learning-rate schedule of the Lightning modules, from a config mapping.

``{"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
"scheduler": {"name": "cosine", "t_max": 100}}`` — names: ``sgd`` (momentum, Nesterov off),
``adam``, ``adamw``; schedulers: ``none``, ``cosine`` (over ``t_max`` epochs), ``step`` (× ``gamma``
every ``step_size`` epochs), ``exponential`` (× ``gamma`` per epoch). Every key is validated: an
unknown name or key is an error naming it.

Example:
    >>> settings = OptimizerSettings.model_validate({"name": "adam", "lr": 1e-3})
    >>> made = make_optimizer(settings, [torch.nn.Parameter(torch.zeros(2))])
    >>> type(made["optimizer"]).__name__
    'Adam'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedulerSettings(_Strict):
    name: Literal["none", "cosine", "step", "exponential"] = "none"
    t_max: PositiveInt = 100
    step_size: PositiveInt = 30
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class OptimizerSettings(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: PositiveFloat = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 0.0
    scheduler: SchedulerSettings = SchedulerSettings()


def make_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter]) -> dict:
    """What ``configure_optimizers`` returns: the optimiser and, if any, its epoch scheduler."""
    params = [p for p in params if p.requires_grad]
    if settings.name == "sgd":
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                              weight_decay=settings.weight_decay)
    elif settings.name == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    out: dict = {"optimizer": opt}
    sched = settings.scheduler
    if sched.name == "cosine":
        out["lr_scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, sched.t_max)
    elif sched.name == "step":
        out["lr_scheduler"] = torch.optim.lr_scheduler.StepLR(opt, sched.step_size, sched.gamma)
    elif sched.name == "exponential":
        out["lr_scheduler"] = torch.optim.lr_scheduler.ExponentialLR(opt, sched.gamma)
    return out
