"""Analyzers as Lightning callbacks: logged during training every ``every_n`` Lightning steps
(one Lightning step = one chunk of full-batch GD steps), cheap enough not to dominate.

* :class:`RepresentationMonitor` — participation ratio of the trunk's features on probe inputs;
* :class:`FeatureReuseMonitor` — the main task's contribution share on auxiliary units (MTL, and
  PT+FT through the pretrained auxiliary head it keeps);
* :class:`PathNormMonitor` — ℓ1 path-norm;
* :class:`~mtl_lab.analysis.symmetry.ConservationMonitor` — conservation-law drift.

Each logs the mean over the ensemble members of the sub-ensemble now training.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from mtl_lab.analysis.features import main_share_on_aux
from mtl_lab.analysis.representation import participation_ratio
from mtl_lab.analysis.symmetry import ConservationMonitor, path_norm
from mtl_lab.models import SharedTrunkNetwork

PROBE_SAMPLES = 256


def training_network(pl_module: L.LightningModule) -> SharedTrunkNetwork:
    """The network now training (a full-batch recipe may train sub-ensembles in turn)."""
    engine = getattr(pl_module, "engine", None)
    return engine.net if engine is not None else pl_module.net


class _EveryN(L.Callback):
    name = "monitor"

    def __init__(self, every_n: int = 10) -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be ≥ 1, got {every_n}")
        self.every_n = every_n
        self._calls = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._calls += 1
        if self._calls % self.every_n == 0:
            with torch.no_grad():
                values = self.measure(pl_module)
            for key, value in values.items():
                pl_module.log(f"{self.name}/{key}", value.float().mean())

    def measure(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class RepresentationMonitor(_EveryN):
    """PR = (tr C)²/tr(C²) of the trunk features h(x) on the first loss term's inputs."""

    name = "representation"

    def measure(self, pl_module):
        net = training_network(pl_module)
        x = pl_module.engine.terms[0].x if getattr(pl_module, "engine", None) else None
        if x is None:
            return {}
        probe = x[:PROBE_SAMPLES] if x.dim() == 2 else x[:, :PROBE_SAMPLES]
        return {"pr": participation_ratio(net.features(probe))}


class FeatureReuseMonitor(_EveryN):
    """Share of the main task's contribution on units that carry the auxiliary task."""

    name = "reuse"

    def measure(self, pl_module):
        net = training_network(pl_module)
        if not {"aux", "main"} <= set(net.tasks):
            return {}
        try:
            return {"main_share_on_aux": main_share_on_aux(net)}
        except ValueError:  # deeper trunks: contributions need probe activity, skip in training
            return {}


class PathNormMonitor(_EveryN):
    """ℓ1 path-norm ‖Φ(θ)‖₁ of the network (all heads)."""

    name = "path_norm"

    def measure(self, pl_module):
        return {"l1": path_norm(training_network(pl_module), q=1.0)}


def default_monitors(every_n: int) -> list[L.Callback]:
    """The analyzers logged during training at the configured frequency."""
    return [RepresentationMonitor(every_n), FeatureReuseMonitor(every_n),
            PathNormMonitor(every_n), ConservationMonitor(every_n)]


def monitors_for(logging_cfg) -> Callable[[], list[L.Callback]]:
    """What a regime's fits log, from a config's ``logging`` section: a factory of fresh
    :func:`default_monitors` for each fit when ``logging.monitors`` is on, of none otherwise
    (``GroupContext(cfg, monitors=monitors_for(cfg.logging))``)."""
    if not logging_cfg.monitors:
        return list
    return lambda: default_monitors(logging_cfg.monitor_every)
