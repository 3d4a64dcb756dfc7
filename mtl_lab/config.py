"""Comparison configs: YAML files validated (pydantic) before any compute.

A config names a task family and its parameters, a model, the regimes to compare, the seeds and
the main-task sample sizes n_main, and the training recipe. :func:`load_config` reads a file,
applies ``key.path=value`` overrides and raises :class:`ConfigError` naming the file and key of
every problem (an unknown key, a wrong type, an impossible value such as overlap > k_main).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mtl_lab.errors import ConfigError
from mtl_lab.regime_specs import REGIME_NAMES, REGIME_SPECS

Regime = Literal[REGIME_NAMES]  # the registry's names: an unknown regime lists the choices

# Values that may differ between the members of one batched group, each a config path and the
# field of :class:`mtl_lab.regimes.Member` that carries it. Everything else must be equal within
# a group (:func:`mtl_lab.sweeps.plan.group_key`).
MEMBER_KNOBS: dict[str, str] = {
    "training.lr": "lr",
    "finetune.rescale": "rescale",
    "finetune.head_init_scale": "head_init_scale",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(Strict):
    """Which task family and its parameters (n_main comes from the comparison's n_main list)."""

    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    cache_dir: str | None = None


class ModelConfig(Strict):
    """Shared trunk + linear heads. ``relu``: He init × init_scale s; ``diagonal``: constant α;
    ``resnet``, ``vit``: the deep trunks of :data:`DEEP_KINDS` on real images (``class_split``
    tasks), shaped by ``trunk_args`` (the trunk class's constructor arguments, validated by
    :data:`TRUNK_ARGS`; the seed is the run's)."""

    kind: Literal["relu", "diagonal", "resnet", "vit"] = "relu"
    width: PositiveInt = 1000
    depth: PositiveInt = 1
    bias: bool = False
    init_scale: PositiveFloat = 1e-3
    head_init_scale: PositiveFloat | None = None
    alpha: PositiveFloat = 1e-3
    trunk_args: dict[str, Any] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- deep trunks
# Real-data runs (SCIENCE.md §3, "Real data"): a deep trunk on a class_split task, trained by the
# Lightning modules (mtl_lab.modules.experiment) instead of the batched engine. The arguments of
# each trunk class are mirrored here so that validating a config needs no torch; tests keep each
# mirror equal to its class's constructor (names and defaults).

DEEP_KINDS: dict[str, str] = {"resnet": "mtl_lab.models.resnet.ResNetTrunk",
                              "vit": "mtl_lab.models.vit.ViTTrunk"}
DEEP_FAMILIES = ("class_split",)
ENGINE_ONLY_MODEL_KEYS = ("width", "depth", "bias", "init_scale", "alpha")
# trunk arguments that come from the images when a config leaves them out: (C, H, W) index
SHAPE_ARGS: dict[str, dict[str, int]] = {"resnet": {"in_channels": 0},
                                         "vit": {"in_channels": 0, "image_size": 1}}


class ResNetArgs(Strict):
    """``mtl_lab.models.resnet.ResNetTrunk``'s arguments (``in_channels``: from the images when
    left out)."""

    in_channels: PositiveInt | None = None
    widths: list[PositiveInt] = Field([64, 128, 256, 512], min_length=1)
    blocks: list[PositiveInt] = Field([2, 2, 2, 2], min_length=1)
    stem: Literal["cifar", "imagenet"] = "cifar"
    zero_init_residual: bool = False

    @model_validator(mode="after")
    def _one_block_count_per_width(self) -> ResNetArgs:
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need the same length "
                             "(one entry per stage)")
        return self


class ViTArgs(Strict):
    """``mtl_lab.models.vit.ViTTrunk``'s arguments (``in_channels`` and ``image_size``: from the
    images when left out)."""

    in_channels: PositiveInt | None = None
    image_size: PositiveInt | None = None
    patch: PositiveInt = 4
    dim: PositiveInt = 192
    depth: PositiveInt = 6
    heads: PositiveInt = 3
    mlp_ratio: PositiveFloat = 4.0

    @model_validator(mode="after")
    def _shapes_divide(self) -> ViTArgs:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.image_size is not None and self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch "
                             f"{self.patch}")
        return self


TRUNK_ARGS: dict[str, type[Strict]] = {"resnet": ResNetArgs, "vit": ViTArgs}


class TrainingConfig(Strict):
    """``full_batch``: GD until loss < loss_threshold or max_steps, restart at lr/lr_backoff on
    divergence; ``minibatch``: SGD (momentum) or Adam for ``epochs`` epochs (a deep trunk's fit
    also stops at ``max_steps`` optimiser steps if that comes first)."""

    mode: Literal["full_batch", "minibatch"] = "full_batch"
    lr: PositiveFloat = 0.1
    max_steps: PositiveInt = 100_000
    loss_threshold: NonNegativeFloat = 1e-10
    divergence_limit: PositiveFloat = 100.0
    max_restarts: NonNegativeInt = 5
    lr_backoff: float = Field(10.0, gt=1.0)
    steps_per_call: PositiveInt = 1000
    dtype: Literal["float32", "float64"] = "float32"
    max_ensemble_mb: PositiveFloat = 16.0
    optimizer: Literal["sgd", "adam"] = "adam"
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 100
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 0.0


# The built-in weightings of mtl_lab.engine.weighting (tests keep this in step with its registry),
# each with whether the batched engine can run it: only weightings whose task weights are fixed by
# the sample counts can; those that learn (uncertainty) or use per-task gradients (pcgrad) run in
# the Lightning modules. Kept here so that validating a config needs no torch.
BUILTIN_WEIGHTINGS = {"per_sample": True, "equal": True, "fixed": True, "uncertainty": False,
                      "pcgrad": False}


def weighting_choices() -> dict[str, bool]:
    """Registered weighting names → whether the engine can run them (built-ins, plus any a user
    registered with ``mtl_lab.engine.weighting.register_weighting`` in this process)."""
    found = dict(BUILTIN_WEIGHTINGS)
    registry = sys.modules.get("mtl_lab.engine.weighting")
    if registry is not None:
        found.update({name: cls.static() for name, cls in registry.WEIGHTINGS.items()})
    return found


class MTLConfig(Strict):
    """MTL task weighting: a registered weighting that the engine can run — ``per_sample`` (the
    paper's), ``equal``, ``fixed`` (``weights`` per task) or one you registered — and its
    ``options``. ``uncertainty`` and ``pcgrad`` are for the Lightning modules."""

    weighting: str = "per_sample"
    weights: dict[Literal["aux", "main"], PositiveFloat] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weighting_is_known_and_runnable(self) -> MTLConfig:
        choices = weighting_choices()
        if self.weighting not in choices:
            raise ValueError(f"unknown weighting {self.weighting!r}; registered weightings: "
                             f"{', '.join(sorted(choices))}")
        if not choices[self.weighting]:
            runnable = ", ".join(sorted(n for n, ok in choices.items() if ok))
            raise ValueError(f"weighting {self.weighting!r} learns its task weights or uses "
                             "per-task gradients during training; the batched engine behind "
                             f"`mtl-lab run` and `sweep` runs weightings fixed by the sample "
                             f"counts ({runnable}): train it with "
                             "mtl_lab.modules.MultiTaskModule (examples/digits_multitask.py)")
        if self.weighting == "fixed" and (self.weights is None or len(self.weights) != 2):
            raise ValueError("weighting 'fixed' needs weights for both 'aux' and 'main'")
        if self.weighting != "fixed" and self.weights is not None:
            raise ValueError(f"weights need weighting 'fixed', not {self.weighting!r}")
        if self.weighting in BUILTIN_WEIGHTINGS and self.options:
            raise ValueError(f"weighting {self.weighting!r} takes no options, got "
                             f"{sorted(self.options)}")
        return self

    def engine_options(self) -> dict[str, Any]:
        """The options the weighting is built with (``fixed``: its ``weights``)."""
        return {**self.options, **({"weights": dict(self.weights)} if self.weights else {})}


# Function-preserving rescalings applied to the pretrained network before PT+FT's factor c
# (SCIENCE.md §6), implemented in mtl_lab.symmetry (its METHODS; a test keeps the two in step).
RESCALING_METHODS = ("none", "enorm", "path_conditioned")
# the model kinds each balancing method is defined for: the neurons of a ReLU MLP, and for ENorm
# also the BatchNorm → ReLU → conv channels inside a ResNet's blocks (mtl_lab.symmetry.channels)
RESCALING_KINDS: dict[str, tuple[str, ...]] = {"enorm": ("relu", "resnet"),
                                               "path_conditioned": ("relu",)}


class FinetuneConfig(Strict):
    """PT+FT: fresh main head of scale γ, trunk rescaled by c, train all or the head only.

    ``gamma_follows_rescale``: γ = c · ``head_init_scale`` instead of ``head_init_scale`` (the
    paper's nested-rescaling experiment pairs them: γ = c·10⁻³). ``rescaling``: a
    function-preserving per-neuron rescaling of the pretrained ReLU trunk and its heads before
    the factor c — ``enorm`` (balance ‖in‖² and ‖out‖² per neuron; on a ResNet, per BatchNorm
    channel inside each block) or ``path_conditioned`` (SCIENCE.md §6; ReLU MLPs only,
    :data:`RESCALING_KINDS`); ``none`` keeps the constant c alone."""

    head_init_scale: PositiveFloat = 1e-3
    rescale: PositiveFloat = 1.0
    train: Literal["all", "head"] = "all"
    gamma_follows_rescale: bool = False
    rescaling: Literal[RESCALING_METHODS] = "none"

    @property
    def gamma(self) -> float:
        """The new head's initial scale γ actually used."""
        return effective_gamma(self.head_init_scale, self.rescale, self.gamma_follows_rescale)


def effective_gamma(head_init_scale: float, rescale: float, follows: bool) -> float:
    """γ = c · head_init_scale when it follows the rescale factor, else head_init_scale."""
    return float(head_init_scale) * (float(rescale) if follows else 1.0)


class RidgeConfig(Strict):
    """Lazy references: ridge strength λ chosen among ``lambdas`` by leave-one-out error."""

    lambdas: list[PositiveFloat] = Field(
        default_factory=lambda: [10.0**e for e in range(-8, 3)], min_length=1
    )


class WandbConfig(Strict):
    enabled: bool = False
    mode: Literal["offline", "online"] = "offline"
    project: str = "mtl-lab"
    entity: str | None = None


class LoggingConfig(Strict):
    """Loggers, progress bars, and the analyzers logged during training every
    ``monitor_every`` Lightning steps (chunks of GD steps); ``monitors: false`` turns them off."""

    csv: bool = True
    tensorboard: bool = False
    progress: bool = True
    monitors: bool = True
    monitor_every: PositiveInt = 10
    wandb: WandbConfig = WandbConfig()


class TrainerConfig(Strict):
    """Where training runs. ``threads``: CPU threads per fit, ``auto`` (chosen from the work of a
    step and the cores free now, never more than this process's share; see
    ``mtl_lab.engine.threads``) or a whole number used as given. Thread counts do not change
    results, so they are not part of a run's identity. ``cuda_graphs``: on a CUDA device, replay
    captured blocks of GD steps instead of launching every kernel (``mtl_lab.engine.graphs``;
    the same numbers, not part of a run's identity either). ``devices``, ``strategy`` and
    ``precision`` (deep trunks only; part of a run's identity unless at their defaults) go to
    ``lightning.Trainer`` as they are: e.g. ``precision: bf16-mixed`` on a GPU, or ``devices: 4,
    strategy: ddp_spawn`` (each fit starts inside a running sweep; Lightning's ``ddp`` starts
    the whole command again in each device's process, which a sweep is not written for)."""

    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    threads: Literal["auto"] | PositiveInt = "auto"
    cuda_graphs: bool = True
    devices: Literal["auto"] | PositiveInt = 1
    strategy: str = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true",
                       "64-true"] = "32-true"


# Lightning's scale settings for deep trunks (``lightning.Trainer(devices=…, strategy=…,
# precision=…)``), at their defaults; a run id leaves a default out.
LIGHTNING_DEFAULTS: dict[str, Any] = {"devices": 1, "strategy": "auto", "precision": "32-true"}
# Keys a run's id leaves out while they hold these values (sweeps.plan.run_config): each was added
# after runs existed, and leaving it out at its default kept every earlier run id. The results
# rows lack them too, so mtl_lab.results.read_results fills them back in ("section.key": value).
OMITTED_AT_DEFAULT: dict[str, Any] = {
    "mtl.options": {},
    "finetune.gamma_follows_rescale": False,
    "finetune.rescaling": "none",
    "model.trunk_args": {},
    **{f"trainer.{key}": value for key, value in LIGHTNING_DEFAULTS.items()},
}


class ComparisonConfig(Strict):
    """One comparison: regimes × seeds × n_main values on one task."""

    name: str = "comparison"
    output_dir: str | None = None
    regimes: list[Regime] = Field(min_length=1)
    seeds: list[NonNegativeInt] = Field(min_length=1)
    n_main: list[PositiveInt] = Field(min_length=1)
    task: TaskConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    pretraining: TrainingConfig | None = None
    mtl: MTLConfig = MTLConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    ridge: RidgeConfig = RidgeConfig()
    logging: LoggingConfig = LoggingConfig()
    trainer: TrainerConfig = TrainerConfig()

    _pretraining_given: frozenset[str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _pretraining_inherits_training(cls, data: Any) -> Any:
        """A ``pretraining`` block starts from ``training``, key by key: what it does not set
        is the training value, never the default (``mtl-lab config`` marks inherited keys)."""
        if isinstance(data, dict) and isinstance(data.get("pretraining"), dict):
            training = data.get("training") or {}
            if isinstance(training, dict):
                data = {**data, "pretraining": {**training, **data["pretraining"]}}
        return data

    @field_validator("regimes", "seeds", "n_main")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @property
    def pretraining_or_training(self) -> TrainingConfig:
        return self.pretraining or self.training

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    @property
    def deep(self) -> bool:
        """A deep trunk on real images (trained by the Lightning modules, not the engine)."""
        return self.model.kind in DEEP_KINDS

    def task_params(self, n_main: int) -> dict[str, Any]:
        """The family's validated parameters for one n_main value, as a plain dict."""
        import tasks

        params = {**self.task.params, "n_main": n_main}
        if self.task.family in DEEP_FAMILIES:
            from tasks.class_split import ClassSplitParams

            return ClassSplitParams.model_validate(params).model_dump()
        return tasks.validate_params(self.task.family, params).model_dump()


def _format_validation(err: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc or '<root>'}: {msg}")
    return lines


def _raise(source: str, lines: list[str], overrides: dict[str, str] | None = None) -> None:
    """A ConfigError listing ``lines`` ("key: problem"); a problem with a key that a
    command-line override set is reported against that override, not the file."""
    overrides = overrides or {}

    def blame(line: str) -> str | None:
        loc = line.split(": ", 1)[0]
        return next((item for key, item in overrides.items()
                     if loc == key or loc.startswith(f"{key}.")), None)

    blamed = [blame(line) for line in lines]
    shown = [f"{line} (from the override {item!r})" if item else line
             for line, item in zip(lines, blamed)]
    where = ("override" if all(blamed) else f"config {source}") if overrides else \
        f"config {source}"
    raise ConfigError(f"invalid {where}:\n" + "\n".join(f"  - {line}" for line in shown))


SWEEP_KEYS = ("base", "axes", "zip")


def validate_config(raw: dict[str, Any], source: str = "<dict>",
                    overrides: dict[str, str] | None = None) -> ComparisonConfig:
    """Validate a raw mapping, including the task family's own parameters for every n_main.

    ``overrides`` maps a key path set on the command line to the override as written
    (``{"training.lr": "training.lr=abc"}``), so that its problems are reported against it.
    """
    import tasks

    if not isinstance(raw, dict):
        _raise(source, [f"top level must be a mapping, got {type(raw).__name__}"])
    sweep_keys = [k for k in SWEEP_KEYS if k in raw]
    if sweep_keys and "regimes" not in raw:
        raise ConfigError(f"{source} is a sweep file (it has {', '.join(sweep_keys)}), not a "
                          f"comparison config: run it with `mtl-lab sweep {source}`")
    try:
        cfg = ComparisonConfig.model_validate(raw)
    except ValidationError as err:
        _raise(source, _format_validation(err), overrides)
    given = frozenset(raw["pretraining"]) if isinstance(raw.get("pretraining"), dict) else None
    problems = _deep_problems(cfg, raw)
    if problems:
        _raise(source, problems, overrides)
    if cfg.deep:
        cfg = _with_trunk_args(cfg, source, overrides)
    cfg._pretraining_given = given
    if cfg.task.family not in DEEP_FAMILIES:
        try:
            tasks.get_family(cfg.task.family)
        except (KeyError, ValueError) as err:
            _raise(source, [f"task.family: {err} (or {', '.join(DEEP_FAMILIES)} for real "
                            "images)"], overrides)
    if "n_main" in cfg.task.params:
        _raise(source, ["task.params.n_main: set n_main at the top level (a list of sizes)"],
               overrides)
    for n in cfg.n_main:
        try:
            cfg.task_params(n)
        except ValidationError as err:
            _raise(source, _format_validation(err, "task.params"), overrides)
    return cfg


def deep_regimes() -> tuple[str, ...]:
    """The regimes a deep trunk runs: every trained one (the kernel references are closed-form
    ridge regressions on the engine's networks)."""
    return tuple(s.name for s in REGIME_SPECS.values() if s.trains != "closed_form")


def _deep_problems(cfg: ComparisonConfig, raw: dict[str, Any]) -> list[str]:
    """What does not fit together between deep trunks, real-image tasks and their settings."""
    deep, kinds = cfg.deep, ", ".join(DEEP_KINDS)
    real = cfg.task.family in DEEP_FAMILIES
    problems = []
    if deep and not real:
        problems.append(f"model.kind: {cfg.model.kind} is a trunk for images; it needs "
                        f"task.family {' or '.join(DEEP_FAMILIES)}, not {cfg.task.family!r} "
                        "(teacher–student families run on model.kind relu or diagonal)")
    if real and not deep:
        problems.append(f"task.family: {cfg.task.family} holds images; it needs a deep trunk, "
                        f"model.kind one of {kinds}, not {cfg.model.kind!r}")
    method = cfg.finetune.rescaling
    if method != "none" and cfg.model.kind not in RESCALING_KINDS[method]:
        where = " or ".join(RESCALING_KINDS[method])
        problems.append(f"finetune.rescaling: {method} rescales the neurons of a ReLU trunk"
                        + (" or the BatchNorm channels of a ResNet's blocks" if "resnet" in
                           RESCALING_KINDS[method] else "")
                        + f" (model.kind {where}), not kind {cfg.model.kind!r}")
    if not deep:
        if cfg.model.trunk_args:
            problems.append(f"model.trunk_args: only for the deep kinds ({kinds}); kind "
                            f"{cfg.model.kind!r} is shaped by width, depth, bias")
        for key, default in LIGHTNING_DEFAULTS.items():
            if getattr(cfg.trainer, key) != default:
                problems.append(f"trainer.{key}: only for the deep kinds ({kinds}); the engine "
                                "trains on one device in training.dtype")
        return problems
    given = (raw.get("model") or {}) if isinstance(raw.get("model"), dict) else {}
    for key in ENGINE_ONLY_MODEL_KEYS:  # a resolved config repeats their defaults: those pass
        if key in given and getattr(cfg.model, key) != ModelConfig.model_fields[key].default:
            problems.append(f"model.{key}: not a setting of kind {cfg.model.kind}; its shape is "
                            "model.trunk_args")
    if "seed" in cfg.model.trunk_args:
        problems.append("model.trunk_args.seed: the trunk's initial weights come from the run's "
                        "seed (seeds)")
    allowed = deep_regimes()
    for i, regime in enumerate(cfg.regimes):
        if regime not in allowed:
            problems.append(f"regimes.{i}: {regime} ({REGIME_SPECS[regime].label}) does not run "
                            f"on a deep trunk ({cfg.model.kind}); deep runs compare "
                            f"{', '.join(allowed)}")
    for section in ("training", "pretraining"):
        recipe = getattr(cfg, section)
        if recipe is None:
            continue
        if recipe.mode != "minibatch":
            problems.append(f"{section}.mode: a deep trunk trains in minibatch epochs "
                            f"(training.mode: minibatch), not {recipe.mode}")
        if recipe.dtype != "float32":
            problems.append(f"{section}.dtype: deep trunks set their precision with "
                            "trainer.precision (e.g. 64-true), not training.dtype")
    if real and (missing := _missing_source(cfg.task.params.get("source", "digits"))):
        problems.append(f"task.params.source: {missing}")
    return problems


def _missing_source(source: Any) -> str | None:
    from tasks.image_sources import missing_local_source

    return missing_local_source(source) if isinstance(source, str) else None


def _with_trunk_args(cfg: ComparisonConfig, source: str,
                     overrides: dict[str, str] | None) -> ComparisonConfig:
    """The config with ``model.trunk_args`` validated and every default filled in (the shape
    arguments that come from the images stay None)."""
    args = {k: v for k, v in cfg.model.trunk_args.items() if k != "seed"}
    try:
        resolved = TRUNK_ARGS[cfg.model.kind].model_validate(args)
    except ValidationError as err:
        _raise(source, _format_validation(err, "model.trunk_args"), overrides)
    model = cfg.model.model_copy(update={"trunk_args": resolved.model_dump(mode="json")})
    return cfg.model_copy(update={"model": model})


def derived_trunk_args(cfg: ComparisonConfig) -> dict[str, int]:
    """The shape arguments a deep config leaves to the images: name → index in (C, H, W)."""
    if not cfg.deep:
        return {}
    return {name: i for name, i in SHAPE_ARGS[cfg.model.kind].items()
            if cfg.model.trunk_args.get(name) is None}


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for key ``a.b.c`` in place, creating sections as needed."""
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _deepcopy(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values parse as YAML (``1e-3``, ``[1, 2]``, ``true``)."""
    out = _deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {key!r}: cannot parse value {value!r}: {err}") from err
        set_path(out, key, parsed)
    return out


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deepcopy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deepcopy(v) for v in raw]
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config {path}: not valid YAML: {err}") from err
    return raw if raw is not None else {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ComparisonConfig:
    """Read, override and validate a comparison config file."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    given = {item.split("=", 1)[0].strip(): item for item in overrides or []}
    return validate_config(raw, str(path), given)


def dump_config(cfg: ComparisonConfig, read_data: bool = True) -> str:
    """The fully resolved config as YAML (every default filled in); keys of a ``pretraining``
    block that it inherited from ``training`` carry the comment ``# from training``, and the
    shape arguments of a deep trunk that come from the images (``model.trunk_args.in_channels``
    left out) the comment ``# from the data: <value> …`` — read from the source's first image
    when ``read_data`` (it loads the source), else said to be filled when the task is built.
    The values stay null, so that the dump validates back to the same config."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    given = cfg._pretraining_given
    inherit = cfg.pretraining is not None and given is not None
    derived = derived_trunk_args(cfg)
    if not inherit and not derived:
        return text
    notes = _derived_notes(cfg, derived, read_data) if derived else {}
    lines, inside, section, subsection = [], False, None, None
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line.startswith("pretraining:")
            section = line.split(":", 1)[0]
        key = line.strip().split(":", 1)[0]
        if inherit and inside and line.startswith("  ") and not line.startswith("   ") \
                and key not in given:
            line += "  # from training"
        if line.startswith("  ") and not line.startswith("   "):
            subsection = key
        if section == "model" and line.startswith("    ") and not line.startswith("     ") \
                and subsection == "trunk_args" and key in notes:
            line += f"  # {notes[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _derived_notes(cfg: ComparisonConfig, derived: dict[str, int], read_data: bool
                   ) -> dict[str, str]:
    """The comment of each trunk argument taken from the images."""
    source = cfg.task.params.get("source", "digits")
    later = "from the data: filled from the images' shape (C, H, W) when the task is built"
    if not read_data:
        return dict.fromkeys(derived, later)
    try:
        from tasks.image_sources import source_input_shape

        shape = source_input_shape(cfg.task_params(min(cfg.n_main)))
    except Exception as err:  # a hub source offline, an unreadable folder: the run will say
        return dict.fromkeys(derived, f"{later} (source {source!r} not read here: "
                                      f"{type(err).__name__})")
    size = "×".join(str(v) for v in shape)
    return {name: f"from the data: {shape[i]} (the images of {source!r} are {size})"
            for name, i in derived.items()}


def get_path(cfg: BaseModel, key: str) -> Any:
    """The value at ``a.b.c`` of a config (``cfg.a.b.c``)."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def member_knobs(cfg: ComparisonConfig) -> dict[str, Any]:
    """The per-member values of a run's config, by :class:`~mtl_lab.regimes.Member` field
    (γ as used: :attr:`FinetuneConfig.gamma`)."""
    knobs = {name: get_path(cfg, key) for key, name in MEMBER_KNOBS.items()}
    knobs["head_init_scale"] = cfg.finetune.gamma
    return knobs


def drop_member_knobs(tree: dict[str, Any]) -> dict[str, Any]:
    """Remove every per-member value from a dumped config (in place; returns it)."""
    for key in MEMBER_KNOBS:
        *sections, last = key.split(".")
        node = tree
        for part in sections:
            node = node[part]
        node.pop(last)
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings so every row is a flat record."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = str(list(value))
        else:
            flat[name] = value
    return flat
