"""Train a group of deep-trunk runs (``model.kind`` resnet, vit) and make their results rows.

:func:`mtl_lab.sweeps.execute.train_group` hands such groups here. Each run is one Lightning fit
(:func:`mtl_lab.modules.experiment.run_deep`); a group is what one worker trains in a row
(:func:`mtl_lab.sweeps.plan.group_key`), sharing the loaded images and, for PT+FT and PT+LP,
one pretrained module per seed. Rows are the engine's (:func:`~mtl_lab.sweeps.execute.run_row`)
with the classification metrics of the modules — ``test_loss_main`` (cross-entropy),
``test_acc_main``, ``train_loss_main``, ``null_loss_main`` (ln k_main, a uniform guess's
cross-entropy), ``test_loss_aux`` and ``test_acc_aux`` (MTL), ``pretrain_*`` (PT+FT, PT+LP) —
and, for the pretrained regimes, the layer-wise representation measures between the pretrained
and the finetuned network over the main task's test images (SCIENCE.md §4, finding 5;
:mod:`mtl_lab.analysis.layers`): ``layer.<name>.{pr_a, pr_b, ensd, cka}`` for every layer of the
trunk (``layer_names()``) and ``logits`` (each network's own head: the auxiliary head of the
pretrained network, the main head of the finetuned one), with their names, input to output, in
``layers``. Each run's module is saved as ``checkpoints/run-<id>.ckpt``
(:func:`mtl_lab.modules.experiment.load_module` reads it back).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn

from mtl_lab.analysis.layers import compare_layers, layer_rows
from mtl_lab.config import ComparisonConfig
from mtl_lab.modules.experiment import (
    EVAL_BATCH,
    DeepContext,
    Images,
    ModuleStore,
    device_of,
    model_dtype,
    run_deep,
    save_module,
)
from mtl_lab.modules.multitask import MultiTaskModule
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.sweeps.plan import RunSpec

AUX_IMAGES_GUESS = 10_000  # the cost estimate's auxiliary images when n_aux is unset


class Readout(nn.Module):
    """A network as the layer analysis sees it: ``trunk.<layer>`` and its head's ``logits``."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.logits = head

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.trunk(x))


def layer_measures(pretrained: MultiTaskModule, finetuned: MultiTaskModule, images: Images,
                   cfg: ComparisonConfig) -> dict[str, float]:
    """``layer.<name>.<measure>`` between the pretrained and the finetuned network, over
    ``images`` (the main task's test images), and ``layers``: their names, input to output."""
    device = device_of(cfg)
    a = Readout(pretrained.trunk, pretrained.heads["aux"]).to(device)
    b = Readout(finetuned.trunk, finetuned.heads["main"]).to(device)
    names = list(pretrained.trunk.layer_names())
    batches = [images.x[s:s + EVAL_BATCH] for s in range(0, len(images), EVAL_BATCH)]
    dtype = model_dtype(a)
    try:
        found = compare_layers(a, b, batches, [f"trunk.{n}" for n in names] + ["logits"],
                               forward=lambda model, x: model(x.to(dtype)), device=device)
    finally:
        a.cpu()
        b.cpu()
    rows = layer_rows({name.removeprefix("trunk."): m for name, m in found.items()})
    return {"layers": ",".join([*names, "logits"]), **rows}


def train_deep_group(group: Sequence[RunSpec], out_dir: str | Path,
                     progress: bool | Callable[[str, int, int, dict], None] = False
                     ) -> list[dict]:
    """Train a group of deep runs one after the other; save their modules; return their rows."""
    from mtl_lab.sweeps.execute import run_row
    from mtl_lab.tracking import group_loggers, log_run_to_wandb, quiet_lightning

    quiet_lightning()
    out_dir = Path(out_dir)
    cfg = group[0].cfg
    ctx = DeepContext(out_dir, progress, group_loggers(cfg, out_dir),
                      ModuleStore(out_dir / "checkpoints"))
    rows = []
    for spec in group:
        t0 = time.perf_counter()
        result = run_deep(spec.regime, spec.seed, spec.n_main, spec.cfg, ctx)
        metrics = dict(result.metrics)
        if result.pretrained is not None:
            metrics.update(layer_measures(result.pretrained, result.module,
                                          result.data.main_test, spec.cfg))
        save_module(result.module, out_dir / "checkpoints" / f"run-{spec.run_id}.ckpt",
                    run_id=spec.run_id, regime=spec.regime)
        row = run_row(spec, metrics, time.perf_counter() - t0, 1)
        row["wandb_id"] = log_run_to_wandb(spec.cfg, out_dir, row, result.history)
        rows.append(row)
    return rows


def deep_group_cost(group: Sequence[RunSpec]) -> int:
    """A rough cost of a deep group: images seen over its fits, its pretraining counted once."""
    cfg = group[0].cfg
    aux = cfg.task.params.get("n_aux") or AUX_IMAGES_GUESS
    spec = REGIME_SPECS[group[0].regime]

    def images(recipe, samples: int) -> int:
        return min(recipe.epochs * samples, recipe.max_steps * recipe.batch_size)

    per_run = [images(cfg.training, r.n_main + (aux if "aux" in spec.tasks else 0))
               for r in group]
    pretraining = images(cfg.pretraining_or_training, aux) if spec.pretrained else 0
    return int(sum(per_run) + pretraining)
