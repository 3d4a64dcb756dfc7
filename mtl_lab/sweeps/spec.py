"""Sweep files: a base comparison config plus axes, expanded into validated configs.

```yaml
name: shared-vs-disjoint
base: configs/quickstart.yaml      # a comparison config file (relative to this file) or mapping
axes:                              # a product over any config keys
  task.params.correlation: [1.0, 0.0]
  seeds: [[0], [1]]
zip:                               # keys that vary together (equal lengths), crossed with axes
  - finetune.rescale: [1.0, 0.1]
    finetune.head_init_scale: [1.0e-3, 1.0e-2]
overrides:                         # per-axis overrides: named cases (a list works too)
  setting:
    - {regimes: [stl, mtl]}
    - {regimes: [ptft], finetune.rescale: 0.01}
```

Every expanded point is validated as a comparison config before any compute; an error names
the sweep file, the point and the key.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from mtl_lab.config import (
    ComparisonConfig,
    ConfigError,
    Strict,
    _deepcopy,
    _format_validation,
    read_yaml,
    set_path,
    validate_config,
)


class SweepSpec(Strict):
    """A base config and the axes to sweep (see the module docstring)."""

    name: str = "sweep"
    output_dir: str | None = None
    base: str | dict[str, Any]
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    overrides: dict[str, list[dict[str, Any]] | dict[str, dict[str, Any]]] = Field(
        default_factory=dict)

    @field_validator("axes", "overrides")
    @classmethod
    def _non_empty_axes(cls, axes: dict[str, list]) -> dict[str, list]:
        empty = [k for k, v in axes.items() if len(v) == 0]
        if empty:
            raise ValueError(f"axis {empty[0]!r} is empty: give it at least one value")
        return axes

    @field_validator("zip")
    @classmethod
    def _zipped_lengths(cls, groups: list[dict[str, list]]) -> list[dict[str, list]]:
        for group in groups:
            lengths = {k: len(v) for k, v in group.items()}
            if len(set(lengths.values())) > 1 or 0 in lengths.values():
                raise ValueError(f"zipped axes need equal, non-zero lengths, got {lengths}")
        return groups


@dataclass(frozen=True)
class SweepPoint:
    """One expanded point: its settings (key → value) and the validated config."""

    settings: dict[str, Any]
    cfg: ComparisonConfig
    labels: dict[str, str] = field(default_factory=dict)  # override axis → the case's name


def _dimensions(spec: SweepSpec) -> list[list[tuple[dict[str, str], dict[str, Any]]]]:
    """Each dimension is a list of alternatives: (labels, settings). An override case is
    labelled by its name (``overrides: {case: {shared: {...}, disjoint: {...}}}``) or, in the
    list form, by its settings; the labels reach every run's results row as ``sweep.<axis>``."""
    dims = [[({}, {key: value}) for value in values] for key, values in spec.axes.items()]
    for group in spec.zip:
        n = len(next(iter(group.values())))
        dims.append([({}, {key: values[i] for key, values in group.items()}) for i in range(n)])
    for axis, cases in spec.overrides.items():
        named = cases.items() if isinstance(cases, dict) else (
            (_describe(case), case) for case in cases)
        dims.append([({axis: str(name)}, dict(case)) for name, case in named])
    return dims


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "base"


def expand(spec: SweepSpec, source: str = "<sweep>", root: Path | None = None
           ) -> list[SweepPoint]:
    """Every point of the sweep as a validated comparison config."""
    base = spec.base
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and root is not None and not path.is_file():
            path = root / path
        base = read_yaml(path)
    points = []
    for combo in itertools.product(*_dimensions(spec)):
        settings: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for part_labels, part in combo:
            settings.update(part)
            labels.update(part_labels)
        raw = _deepcopy(base)
        for key, value in settings.items():
            set_path(raw, key, value)
        raw["name"] = spec.name
        label = f"{source} point {len(points)} ({_describe(settings)})"
        points.append(SweepPoint(settings, validate_config(raw, label), labels))
    return points


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[SweepPoint]]:
    """Read, validate and expand a sweep file; every problem is a ConfigError naming it."""
    path = Path(path)
    raw = read_yaml(path)
    if isinstance(raw, dict) and "base" not in raw and {"regimes", "task"} & raw.keys():
        raise ConfigError(f"{path} is a comparison config (it has "
                          f"{', '.join(sorted({'regimes', 'task'} & raw.keys()))}), not a sweep "
                          f"file: run it with `mtl-lab run {path}`")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        lines = "\n".join(f"  - {line}" for line in _format_validation(err))
        raise ConfigError(f"invalid sweep {path}:\n{lines}") from err
    return spec, expand(spec, str(path), path.parent)
