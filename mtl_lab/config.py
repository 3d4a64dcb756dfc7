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
from mtl_lab.regime_specs import REGIME_NAMES

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
    """Shared trunk + linear heads. ``relu``: He init × init_scale s; ``diagonal``: constant α."""

    kind: Literal["relu", "diagonal"] = "relu"
    width: PositiveInt = 1000
    depth: PositiveInt = 1
    bias: bool = False
    init_scale: PositiveFloat = 1e-3
    head_init_scale: PositiveFloat | None = None
    alpha: PositiveFloat = 1e-3


class TrainingConfig(Strict):
    """``full_batch``: GD until loss < loss_threshold or max_steps, restart at lr/lr_backoff on
    divergence; ``minibatch``: SGD (momentum) or Adam for ``epochs`` epochs."""

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


class FinetuneConfig(Strict):
    """PT+FT: fresh main head of scale γ, trunk rescaled by c, train all or the head only.

    ``gamma_follows_rescale``: γ = c · ``head_init_scale`` instead of ``head_init_scale`` (the
    paper's nested-rescaling experiment pairs them: γ = c·10⁻³)."""

    head_init_scale: PositiveFloat = 1e-3
    rescale: PositiveFloat = 1.0
    train: Literal["all", "head"] = "all"
    gamma_follows_rescale: bool = False

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
    the same numbers, not part of a run's identity either)."""

    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    threads: Literal["auto"] | PositiveInt = "auto"
    cuda_graphs: bool = True


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

    def task_params(self, n_main: int) -> dict[str, Any]:
        """The family's validated parameters for one n_main value, as a plain dict."""
        import tasks

        return tasks.validate_params(self.task.family, {**self.task.params, "n_main": n_main}
                                     ).model_dump()


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
    if isinstance(raw.get("pretraining"), dict):
        cfg._pretraining_given = frozenset(raw["pretraining"])
    try:
        tasks.get_family(cfg.task.family)
    except (KeyError, ValueError) as err:
        _raise(source, [f"task.family: {err}"], overrides)
    if "n_main" in cfg.task.params:
        _raise(source, ["task.params.n_main: set n_main at the top level (a list of sizes)"],
               overrides)
    for n in cfg.n_main:
        try:
            cfg.task_params(n)
        except ValidationError as err:
            _raise(source, _format_validation(err, "task.params"), overrides)
    return cfg


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


def dump_config(cfg: ComparisonConfig) -> str:
    """The fully resolved config as YAML (every default filled in); keys of a ``pretraining``
    block that it inherited from ``training`` carry the comment ``# from training``."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    given = cfg._pretraining_given
    if cfg.pretraining is None or given is None:
        return text
    lines, inside = [], False
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line.startswith("pretraining:")
        key = line.strip().split(":", 1)[0]
        if inside and line.startswith("  ") and not line.startswith("   ") and key not in given:
            line += "  # from training"
        lines.append(line)
    return "\n".join(lines) + "\n"


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
