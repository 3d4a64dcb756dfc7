"""Real-data runs on deep trunks (SCIENCE.md §3, "Real data"): STL, MTL, PT+FT and PT+LP of a
ResNet or ViT trunk on a ``class_split`` task, each run one Lightning fit of the lab's modules.

What the executor (:mod:`mtl_lab.sweeps.deep`) calls for a run of a config whose ``model.kind`` is
a deep trunk (:data:`mtl_lab.config.DEEP_KINDS`):

* **STL** — :class:`~mtl_lab.modules.MultiTaskModule` with the main task alone, from the trunk's
  seeded initialisation;
* **MTL** — the same trunk with an auxiliary and a main head, trained on batches drawn from the
  auxiliary and main training images together (``mtl.weighting``; the paper's ``per_sample``
  is the mean over the concatenated samples);
* **PT+FT** — the trunk pretrained on the auxiliary task (once per seed and configuration:
  :class:`ModuleStore`, on disk under the output folder's ``checkpoints/``, keyed by
  :func:`pretrain_key`, so every n_main and every rescale factor c of a sweep shares it), then
  :meth:`~mtl_lab.modules.FinetuneModule.from_pretrained`: a copy of the trunk with every
  parameter × c and a fresh main head of scale γ, trained all (``finetune.train``);
* **PT+LP** — the same with only the new head trained (a linear probe on the frozen trunk).

Training is ``training.epochs`` epochs of minibatch ``training.optimizer`` (SGD with
``momentum`` or Adam; ``pretraining`` for the auxiliary fit, key by key from ``training``), cut
at ``training.max_steps`` optimiser steps when that comes first (its default, 1e5, leaves the
epochs to decide; a small budget keeps a fit on thousands of auxiliary images as short as one
on a few main-task images), through a ``lightning.Trainer`` with the config's
``trainer.accelerator``, ``devices``, ``strategy`` and ``precision``. Fresh heads of STL, MTL
and pretraining start at N(0, 1/H)·``model.head_init_scale`` (1 when unset) drawn from the seed
and the task's name; the trunk from its own seeded initialisation; the batches' order from a
generator seeded by the seed: the same config and seed give the same numbers (on a GPU, up to
cuDNN's own non-determinism).

Data: the task's splits come from :func:`tasks.class_split.build_class_split` (the source loaded
once per process). Without augmentation (the default, as in the paper) each split is decoded
once into a tensor and batches are slices of it: per-sample ``Dataset`` indexing and collation,
not the network, bounded the ResNet-18 rate on an H200 (benchmarks/README.md). With
``augment: true`` the training splits are read through their ``datasets`` transform a batch at a
time, in worker processes on a GPU. The auxiliary images come from the split built with the
smallest n_main, so that they are the same for every n_main even when ``n_aux`` draws a subset.

Input shapes come from the images: a trunk argument that the config leaves out
(:data:`mtl_lab.config.SHAPE_ARGS`: ``in_channels``, and ``image_size`` for a ViT) is the
images' value; one that the config gives must match them (a :class:`ConfigError` otherwise).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtl_lab.checkpoints import atomic_torch_save
from mtl_lab.config import DEEP_KINDS, SHAPE_ARGS, ComparisonConfig, TrainingConfig
from mtl_lab.errors import CheckpointError, ConfigError
from mtl_lab.modules.finetune import FinetuneModule
from mtl_lab.modules.heads import TaskSpec
from mtl_lab.modules.multitask import MultiTaskModule
from mtl_lab.progress import tqdm
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.symmetry import Rescaling

MODULE_FORMAT = "mtl-lab-module/1"
EVAL_BATCH = 1024
LOADER_WORKERS = 4  # on a GPU, for augmented (streamed) training splits


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Images:
    """One split decoded into memory: inputs (n, C, H, W) float32 and labels (n,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: list[int]) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class Streamed:
    """A ``datasets`` split read through its transform a batch at a time (augmented splits)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, index: list[int]) -> tuple[Tensor, Tensor]:
        part = self.dataset[index]
        return part["x"], torch.as_tensor(part["y"])


def decode(dataset, chunk: int = 4096) -> Images:
    """Every sample of a class_split split as tensors (read in chunks through its transform)."""
    xs, ys = [], []
    for start in range(0, len(dataset), chunk):
        part = dataset[start:start + chunk]
        xs.append(part["x"])
        ys.append(torch.as_tensor(part["y"]))
    return Images(torch.cat(xs).float().contiguous(), torch.cat(ys).long())


@dataclass(frozen=True)
class RunData:
    """The images of one run: the main task at its n_main, the auxiliary task, the shapes."""

    main_train: Images | Streamed
    main_test: Images
    aux_train: Images | Streamed
    aux_test: Images
    input_shape: tuple[int, int, int]
    main_classes: tuple[int, ...]
    aux_classes: tuple[int, ...]

    @property
    def k_main(self) -> int:
        return len(self.main_classes)

    @property
    def k_aux(self) -> int:
        return len(self.aux_classes)


@functools.lru_cache(maxsize=2)
def source_data(source: str):
    """A class-split source, loaded once per process (:func:`tasks.class_split.load_source`)."""
    from tasks.class_split import load_source

    return load_source(source)


def build_split(params: dict[str, Any], seed: int):
    """The class-split task of ``params`` and ``seed`` (a ConfigError when the source cannot
    give it, e.g. fewer images than n_main)."""
    from tasks.class_split import ClassSplitError, build_class_split

    try:
        return build_class_split(params, seed, source_data(params["source"]))
    except ClassSplitError as err:
        raise ConfigError(f"task.params: {err}") from err


@functools.lru_cache(maxsize=4)
def _decoded(params_json: str, seed: int, which: tuple[str, ...]) -> tuple:
    """The decoded splits ``which`` of a task, and the task."""
    split = build_split(json.loads(params_json), seed)
    return (*(decode(split.data[name]) for name in which), split)


def load_run_data(cfg: ComparisonConfig, seed: int, n_main: int) -> RunData:
    """The images of one run (module docstring). Decoded splits are cached per process; with
    augmentation every run builds its splits afresh, so that its random crops and flips do not
    depend on the runs before it."""
    params = cfg.task_params(n_main)
    aux_params = {**params, "n_main": params["main_classes"]}  # the same for every n_main
    if params["augment"]:
        split, aux = build_split(params, seed), build_split(aux_params, seed)
        main_train, aux_train = Streamed(split.data["main_train"]), Streamed(aux.data["aux_train"])
        main_test, aux_test = decode(split.data["main_test"]), decode(aux.data["aux_test"])
    else:
        main_train, main_test, split = _decoded(json.dumps(params, sort_keys=True), seed,
                                                ("main_train", "main_test"))
        aux_train, aux_test, _ = _decoded(json.dumps(aux_params, sort_keys=True), seed,
                                          ("aux_train", "aux_test"))
    return RunData(main_train=main_train, main_test=main_test, aux_train=aux_train,
                   aux_test=aux_test, input_shape=split.input_shape,
                   main_classes=split.main_classes, aux_classes=split.aux_classes)


class TaskImages(Dataset):
    """(x, y, task) batches over one or more splits, each tagged with its task's index in the
    module's task list. A DataLoader fetches a whole batch at once (``__getitems__``); its
    samples come grouped by split (the loss is a mean: their order does not matter)."""

    def __init__(self, parts: Sequence[tuple[Images | Streamed, int]]) -> None:
        self.parts = list(parts)
        self.starts = [0]
        for split, _ in self.parts:
            self.starts.append(self.starts[-1] + len(split))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        xs, ys, ts = [], [], []
        order = torch.as_tensor(indices, dtype=torch.long)
        for k, (split, task) in enumerate(self.parts):
            inside = order[(order >= self.starts[k]) & (order < self.starts[k + 1])]
            if inside.numel():
                x, y = split.take((inside - self.starts[k]).tolist())
                xs.append(x)
                ys.append(y)
                ts.append(torch.full((len(y),), task, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        x, y, t = self.__getitems__([i])
        return x[0], y[0], t[0]


def _whole_batch(batch):
    """The DataLoader's collate function: ``__getitems__`` already made the batch."""
    return batch


def make_loader(parts: Sequence[tuple[Images | Streamed, int]], batch_size: int, seed: int,
                on_gpu: bool) -> DataLoader:
    """A shuffling DataLoader over ``parts`` with its order seeded by ``seed``; pinned memory on
    a GPU, and worker processes there when a split is streamed (augmented)."""
    streamed = any(isinstance(split, Streamed) for split, _ in parts)
    workers = min(LOADER_WORKERS, os.cpu_count() or 1) if on_gpu and streamed else 0
    return DataLoader(TaskImages(parts), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(int(seed)),
                      collate_fn=_whole_batch, num_workers=workers, pin_memory=on_gpu,
                      persistent_workers=workers > 0)


# ----------------------------------------------------------------------------- modules


def trunk_spec(cfg: ComparisonConfig, input_shape: Sequence[int], seed: int) -> dict[str, Any]:
    """The trunk's ``{"class_path", "init_args"}``: ``model.trunk_args``, the shape arguments
    from the images (checked against them when given) and the run's seed."""
    kind = cfg.model.kind
    args = dict(cfg.model.trunk_args)
    shape = tuple(int(v) for v in input_shape)
    size = "×".join(map(str, shape))
    source = cfg.task.params.get("source", "digits")
    for name, i in SHAPE_ARGS[kind].items():
        if args.get(name) is None:
            args[name] = shape[i]
        elif int(args[name]) != shape[i]:
            raise ConfigError(f"model.trunk_args.{name} = {args[name]}, but the images of source "
                              f"{source!r} are {size} (C×H×W): leave it out to take it from them")
    if kind == "vit":
        if shape[1] != shape[2]:
            raise ConfigError(f"model.kind vit needs square images; source {source!r} has {size}")
        if args["image_size"] % args["patch"]:
            raise ConfigError(f"model.trunk_args.patch = {args['patch']} does not divide the "
                              f"images' side {args['image_size']} (source {source!r})")
    return {"class_path": DEEP_KINDS[kind], "init_args": {**args, "seed": int(seed)}}


def optimizer_settings(recipe: TrainingConfig) -> dict[str, Any]:
    """The modules' optimiser mapping of a training recipe."""
    return {"name": recipe.optimizer, "lr": recipe.lr,
            "momentum": recipe.momentum if recipe.optimizer == "sgd" else 0.0,
            "weight_decay": recipe.weight_decay}


def head_scale(cfg: ComparisonConfig) -> float:
    """Initial scale of the fresh heads of STL, MTL and pretraining."""
    return float(cfg.model.head_init_scale) if cfg.model.head_init_scale is not None else 1.0


def accelerator(cfg: ComparisonConfig) -> str:
    """Lightning's accelerator for a config (``auto``: a CUDA GPU when there is one)."""
    acc = cfg.trainer.accelerator
    if acc in ("cuda", "gpu") or (acc == "auto" and torch.cuda.is_available()):
        return "gpu"
    return "mps" if acc == "mps" else "cpu"


def device_of(cfg: ComparisonConfig) -> torch.device:
    return {"gpu": torch.device("cuda"), "mps": torch.device("mps")}.get(accelerator(cfg),
                                                                        torch.device("cpu"))


# ----------------------------------------------------------------------------- fitting


class EpochProgress(L.Callback):
    """Training progress of one fit in optimiser steps: a bar of its own, or reports to
    ``sink(description, done, total, postfix)`` (a ``--jobs`` worker's queue), at most every
    ``every_s`` seconds. Records the mean training objective of every epoch in ``history``."""

    def __init__(self, description: str, show: bool | Callable = False,
                 every_s: float = 0.25) -> None:
        self.description = description
        self.sink = show if callable(show) else None
        self.show = bool(show)
        self.every_s = every_s
        self.bar = None
        self.total = 0
        self.last = 0.0
        self.history: list[tuple[int, float]] = []

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self.total = int(trainer.max_epochs * max(1, trainer.num_training_batches))
        if self.show and self.sink is None:
            self.bar = tqdm(total=self.total, desc=self.description, leave=False, unit="step",
                            dynamic_ncols=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if not self.show or time.perf_counter() - self.last < self.every_s:
            return
        self.last = time.perf_counter()
        done = min(trainer.global_step, self.total)
        postfix = {"epoch": trainer.current_epoch}
        if self.sink is not None:
            self.sink(self.description, done, self.total, postfix)
        else:
            self.bar.n = done
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def on_train_epoch_end(self, trainer, module) -> None:
        loss = trainer.callback_metrics.get("train/loss_epoch")
        self.history.append((trainer.global_step, float(loss) if loss is not None else math.nan))

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class DeepContext:
    """What every run of a group shares: the output folder, progress, loggers, the store of
    pretrained modules."""

    out_dir: Path | None = None
    progress: bool | Callable[[str, int, int, dict], None] = False
    loggers: Callable[[str], list] = field(default=lambda name: [])
    store: ModuleStore | None = None


def fit(module: MultiTaskModule, loader: DataLoader, epochs: int, max_steps: int,
        cfg: ComparisonConfig, ctx: DeepContext, name: str) -> dict[str, Any]:
    """Train ``module`` for ``epochs`` epochs or ``max_steps`` optimiser steps, whichever comes
    first; its optimiser steps, epochs, wall time and loss history."""
    progress = EpochProgress(name, ctx.progress)
    trainer = L.Trainer(
        accelerator=accelerator(cfg), devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy, precision=cfg.trainer.precision, max_epochs=epochs,
        max_steps=max_steps,
        logger=ctx.loggers(name) or False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, callbacks=[progress],
        log_every_n_steps=max(1, min(50, len(loader))), num_sanity_val_steps=0,
        limit_val_batches=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the modules define validation steps; these fits have none
        warnings.filterwarnings("ignore", message=r".*(val_dataloader|eval mode at the start)")
        trainer.fit(module, train_dataloaders=loader)
    return {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "train_wall_time": time.perf_counter() - t0, "history": progress.history}


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


@torch.no_grad()
def evaluate(module: MultiTaskModule, task: str, images: Images | Streamed,
             device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of head ``task`` on ``images``, in eval mode."""
    was = module.training
    module.eval().to(device)
    dtype = model_dtype(module)
    loss, correct, n = 0.0, 0, len(images)
    try:
        for start in range(0, n, EVAL_BATCH):
            x, y = images.take(list(range(start, min(n, start + EVAL_BATCH))))
            logits = module(x.to(device, dtype), task).float()
            y = y.to(device)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
    finally:
        module.train(was)
    return (loss / n, correct / n) if n else (math.nan, math.nan)


# ----------------------------------------------------------------------------- pretraining


def pretrain_key(cfg: ComparisonConfig, seed: int, input_shape: Sequence[int]) -> str:
    """sha256 of what determines a pretrained module: the trunk (its arguments, the images'
    shape), the heads' scale, the pretraining recipe, the task without n_main (its images), the
    seed and Lightning's precision, devices and strategy."""
    params = cfg.task_params(min(cfg.n_main))
    params.pop("n_main")
    trainer = cfg.trainer
    meta = {"format": MODULE_FORMAT, "trunk": trunk_spec(cfg, input_shape, seed),
            "head_init_scale": head_scale(cfg),
            "pretraining": cfg.pretraining_or_training.model_dump(mode="json"),
            "task": params, "seed": int(seed),
            "lightning": [trainer.precision, trainer.devices, trainer.strategy]}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]


def save_module(module: MultiTaskModule, path: Path, **extra: Any) -> None:
    """A module's class, hyper-parameters and weights (on the CPU), written atomically."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_torch_save({"format": MODULE_FORMAT, "class": type(module).__name__,
                       "hparams": dict(module.hparams), "state_dict": state, "extra": extra},
                      path)


def read_module_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a module checkpoint, validated (a clear error for a corrupt file)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}; move it away to train "
                              "it again") from err
    if not isinstance(payload, dict) or payload.get("format") != MODULE_FORMAT:
        raise CheckpointError(f"{path} is not an mtl-lab module checkpoint")
    return payload


def load_module(path: str | Path) -> tuple[MultiTaskModule, dict[str, Any]]:
    """Rebuild a module saved by :func:`save_module`; returns (module, extra metadata)."""
    payload = read_module_checkpoint(path)
    cls = {"MultiTaskModule": MultiTaskModule, "FinetuneModule": FinetuneModule}[payload["class"]]
    accepted = inspect.signature(cls.__init__).parameters
    hparams = {k: v for k, v in payload["hparams"].items() if k in accepted}
    if cls is FinetuneModule:
        hparams["rescale"] = 1.0  # the saved weights are already rescaled
    module = cls(**hparams)
    module.load_state_dict(payload["state_dict"])
    return module, payload.get("extra", {})


class ModuleStore:
    """Pretrained modules by key: in memory for this process, on disk under ``root``
    (``deep-pretrain-<key>.ckpt``), with a file lock per key so that processes sharing the
    folder (``--jobs``, Ray) pretrain each key once."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.memory: dict[str, tuple[MultiTaskModule, dict]] = {}

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"deep-pretrain-{key}.ckpt"

    def get(self, key: str) -> tuple[MultiTaskModule, dict] | None:
        if key not in self.memory and (path := self.path(key)) is not None and path.is_file():
            self.memory[key] = load_module(path)
        return self.memory.get(key)

    def put(self, key: str, module: MultiTaskModule, summary: dict) -> None:
        self.memory[key] = (module, summary)
        if (path := self.path(key)) is not None:
            save_module(module, path, **summary)

    def check(self) -> None:
        """Every stored module checkpoint must be readable (before any compute)."""
        if self.root is not None and self.root.is_dir():
            for path in sorted(self.root.glob("deep-pretrain-*.ckpt")):
                read_module_checkpoint(path)

    @contextmanager
    def locked(self, key: str):
        if self.root is None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".deep-pretrain-{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def pretrained_module(cfg: ComparisonConfig, seed: int, data: RunData, ctx: DeepContext
                      ) -> tuple[MultiTaskModule, dict[str, Any]]:
    """The module pretrained on the auxiliary task for this config and seed (trained if new),
    and its ``pretrain_*`` summary."""
    store = ctx.store or ModuleStore(None)
    ctx.store = store
    key = pretrain_key(cfg, seed, data.input_shape)
    with store.locked(key):
        if store.get(key) is None:
            recipe = cfg.pretraining_or_training
            module = MultiTaskModule(trunk_spec(cfg, data.input_shape, seed),
                                     [TaskSpec("aux", "cross_entropy", data.k_aux)],
                                     optimizer=optimizer_settings(recipe),
                                     head_init_scale=head_scale(cfg), seed=seed,
                                     threads=cfg.trainer.threads)
            loader = make_loader([(data.aux_train, 0)], recipe.batch_size, seed,
                                 accelerator(cfg) == "gpu")
            done = fit(module, loader, recipe.epochs, recipe.max_steps, cfg, ctx,
                       f"pretrain-seed{seed}")
            device = device_of(cfg)
            train_loss, train_acc = evaluate(module, "aux", data.aux_train, device)
            test_loss, test_acc = evaluate(module, "aux", data.aux_test, device)
            module.cpu()
            store.put(key, module, {
                "train_loss": train_loss, "train_acc": train_acc, "test_loss_aux": test_loss,
                "test_acc_aux": test_acc, "steps": done["steps"], "epochs": done["epochs"],
                "status": status_of(train_loss), "wall_time": done["train_wall_time"]})
    module, summary = store.get(key)
    return module, {"pretrain_key": key, **{f"pretrain_{k}": v for k, v in summary.items()}}


def status_of(loss: float) -> str:
    """``epochs`` (trained for its epochs; minibatch runs have no convergence criterion) or
    ``diverged`` (a non-finite training loss)."""
    return "epochs" if math.isfinite(loss) else "diverged"


# ----------------------------------------------------------------------------- runs


@dataclass
class DeepResult:
    """One run's metrics, its trained module, the pretrained module it started from (PT+FT,
    PT+LP) and its images; ``history``: (step, mean training objective) per epoch."""

    metrics: dict[str, Any]
    module: MultiTaskModule
    data: RunData
    pretrained: MultiTaskModule | None = None
    history: list[tuple[int, float]] = field(default_factory=list)


def run_deep(regime: str, seed: int, n_main: int, cfg: ComparisonConfig,
             ctx: DeepContext) -> DeepResult:
    """Train one run of a deep config (module docstring) and evaluate it."""
    spec = REGIME_SPECS[regime]
    if spec.trains == "closed_form":
        raise ConfigError(f"regime {regime} does not run on a deep trunk")
    data = load_run_data(cfg, seed, n_main)
    recipe = cfg.training
    main = TaskSpec("main", "cross_entropy", data.k_main)
    on_gpu = accelerator(cfg) == "gpu"
    extra: dict[str, Any] = {}
    pretrained = None
    if spec.pretrained:
        pretrained, extra = pretrained_module(cfg, seed, data, ctx)
        train = "head" if spec.trains == "head" else cfg.finetune.train
        rescale = (cfg.finetune.rescale if cfg.finetune.rescaling == "none"
                   else Rescaling(cfg.finetune.rescaling, cfg.finetune.rescale))
        module: MultiTaskModule = FinetuneModule.from_pretrained(
            pretrained, main, rescale=rescale, head_init_scale=cfg.finetune.gamma,
            train=train, optimizer=optimizer_settings(recipe), seed=seed,
            threads=cfg.trainer.threads)
        parts = [(data.main_train, 0)]
    else:
        tasks = [TaskSpec("aux", "cross_entropy", data.k_aux), main] if "aux" in spec.tasks \
            else [main]
        module = MultiTaskModule(trunk_spec(cfg, data.input_shape, seed), tasks,
                                 weighting=cfg.mtl.weighting,
                                 weighting_options=cfg.mtl.engine_options(),
                                 optimizer=optimizer_settings(recipe),
                                 head_init_scale=head_scale(cfg), seed=seed,
                                 threads=cfg.trainer.threads)
        parts = [(data.aux_train, 0), (data.main_train, 1)] if len(tasks) == 2 \
            else [(data.main_train, 0)]
    loader = make_loader(parts, recipe.batch_size, seed, on_gpu)
    done = fit(module, loader, recipe.epochs, recipe.max_steps, cfg, ctx,
               f"{regime}-seed{seed}-n{n_main}")
    device = device_of(cfg)
    metrics: dict[str, Any] = {}
    metrics["train_loss_main"], metrics["train_acc_main"] = evaluate(module, "main",
                                                                     data.main_train, device)
    metrics["test_loss_main"], metrics["test_acc_main"] = evaluate(module, "main",
                                                                   data.main_test, device)
    objective = metrics["train_loss_main"]
    if "aux" in module.task_names:
        train_aux, _ = evaluate(module, "aux", data.aux_train, device)
        metrics["test_loss_aux"], metrics["test_acc_aux"] = evaluate(module, "aux",
                                                                     data.aux_test, device)
        module.cpu()
        with torch.no_grad():  # the training objective over all the training images
            objective = float(module.weighting(
                {"aux": torch.tensor(train_aux), "main": torch.tensor(objective)},
                {"aux": len(data.aux_train), "main": len(data.main_train)}))
    module.cpu()
    metrics.update({
        "train_loss": objective, "null_loss_main": math.log(data.k_main),
        "steps": done["steps"], "epochs": done["epochs"], "final_lr": recipe.lr, "restarts": 0,
        "status": status_of(objective), "train_wall_time": done["train_wall_time"],
        "input_shape": "×".join(map(str, data.input_shape)),
        "main_classes": str(list(data.main_classes)), "n_aux_train": len(data.aux_train),
        "n_main_test": len(data.main_test), **extra})
    return DeepResult(metrics, module, data, pretrained, done["history"])
