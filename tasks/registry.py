"""Registry of teacher–student task families and the cached dataset builder.

A family is a generate function ``(params, seed) -> {split: (x, y)}`` plus a teacher function
``(params, seed) -> {name: array}`` and a pydantic params model. :func:`build_task` turns a
family into a :class:`datasets.DatasetDict` with splits aux_train, main_train, aux_test and
main_test, cached on disk under a folder keyed by sha256 of (family, version, params, seed).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from tasks.sampling import SPLITS

if TYPE_CHECKING:  # imported where used: validating parameters needs neither datasets nor arrow
    import datasets

GenerateFn = Callable[[Any, int], dict[str, tuple[np.ndarray, np.ndarray]]]
TeacherFn = Callable[[Any, int], dict[str, np.ndarray]]

CACHE_ENV_VAR = "MTL_LAB_CACHE"
STORAGE_FORMAT = 1  # bump if the on-disk layout produced by build_task changes
META_FILE = "task_meta.json"


@dataclass(frozen=True)
class TaskFamily:
    """A registered task family: params model, generator, teacher and cache version."""

    name: str
    params_model: type[BaseModel]
    generate: GenerateFn
    teacher: TeacherFn
    version: int = 1


class UnknownFamilyError(KeyError, ValueError):
    """Raised by :func:`get_family` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, TaskFamily] = {}


def register_family(
    name: str,
    params_model: type[BaseModel],
    teacher: TeacherFn,
    version: int = 1,
) -> Callable[[GenerateFn], GenerateFn]:
    """Decorator registering ``generate(params, seed)`` as task family ``name``.

    Raises ValueError if ``name`` is already registered by a different function (re-running
    the same module, e.g. ``importlib.reload``, replaces the entry instead).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("family name must be a non-empty string")
    if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
        raise TypeError("params_model must be a pydantic BaseModel subclass")

    def decorator(generate: GenerateFn) -> GenerateFn:
        existing = _REGISTRY.get(name)
        if existing is not None and not _same_function(existing.generate, generate):
            raise ValueError(
                f"task family {name!r} is already registered "
                f"(by {existing.generate.__module__}.{existing.generate.__qualname__})"
            )
        _REGISTRY[name] = TaskFamily(
            name=name,
            params_model=params_model,
            generate=generate,
            teacher=teacher,
            version=int(version),
        )
        return generate

    return decorator


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def list_families() -> list[str]:
    """Return the sorted names of all registered task families."""
    return sorted(_REGISTRY)


def get_family(name: str) -> TaskFamily:
    """Return the registered family ``name``; raise UnknownFamilyError listing known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_families()) or "(none)"
        raise UnknownFamilyError(f"unknown task family {name!r}; known families: {known}") from None


def load_family_module(dotted: str) -> Any:
    """Import the module ``dotted`` (e.g. ``"my_pkg.my_tasks"``) so its families register."""
    return importlib.import_module(dotted)


def validate_params(family_name: str, params: dict[str, Any] | BaseModel) -> BaseModel:
    """Validate ``params`` against the family's pydantic model (pydantic.ValidationError)."""
    family = get_family(family_name)
    if isinstance(params, family.params_model):
        return family.params_model.model_validate(params.model_dump())
    if isinstance(params, BaseModel):
        params = params.model_dump()
    return family.params_model.model_validate(params)


def task_teacher(
    family: str, params: dict[str, Any] | BaseModel, seed: int
) -> dict[str, np.ndarray]:
    """Return the family's teacher parameters (float64 arrays) drawn from stream 0 of ``seed``."""
    fam = get_family(family)
    validated = validate_params(family, params)
    return fam.teacher(validated, int(seed))


def default_cache_dir() -> Path:
    """Return ``$MTL_LAB_CACHE`` if set, else ``~/.cache/mtl-lab/tasks``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mtl-lab" / "tasks"


def _cache_payload(family: str, params: dict[str, Any] | BaseModel, seed: int) -> dict[str, Any]:
    fam = get_family(family)
    validated = validate_params(family, params)
    return {
        "family": fam.name,
        "version": fam.version,
        "params": validated.model_dump(mode="json"),
        "seed": int(seed),
        "storage_format": STORAGE_FORMAT,
    }


def _canonical_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def task_cache_key(family: str, params: dict[str, Any] | BaseModel, seed: int) -> str:
    """Return sha256 hex of canonical JSON of {family, version, validated params, seed}."""
    payload = _cache_payload(family, params, seed)
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


def task_cache_path(
    family: str,
    params: dict[str, Any] | BaseModel,
    seed: int,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return the folder ``<cache_dir>/<family>-<sha256>`` where :func:`build_task` caches."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{family}-{task_cache_key(family, params, seed)}"


def _split_dataset(x: np.ndarray, y: np.ndarray, fingerprint: str) -> datasets.Dataset:
    import datasets
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"generate must return x (n, d) and y (n,), got {x.shape} and {y.shape}")
    n, d = x.shape
    features = datasets.Features(
        {"x": datasets.List(datasets.Value("float32"), length=d), "y": datasets.Value("float32")}
    )
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(n * d)), d),
            "y": pa.array(y),
        }
    )
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info, fingerprint=fingerprint)


def _generate_dataset_dict(
    fam: TaskFamily, validated: BaseModel, seed: int, key: str
) -> datasets.DatasetDict:
    import datasets

    splits = fam.generate(validated, seed)
    if set(splits) != set(SPLITS):
        raise ValueError(
            f"family {fam.name!r} generate() returned splits {sorted(splits)}, "
            f"expected exactly {list(SPLITS)}"
        )
    return datasets.DatasetDict(
        {s: _split_dataset(*splits[s], fingerprint=f"{key[:32]}-{s}") for s in SPLITS}
    )


def _try_load(path: Path, payload: dict[str, Any]) -> datasets.DatasetDict | None:
    """Load a cached DatasetDict, returning None if it is missing, partial or corrupt."""
    import datasets

    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if meta != json.loads(_canonical_json(payload)):
            return None
        dd = datasets.load_from_disk(str(path))
        if not isinstance(dd, datasets.DatasetDict) or set(dd.keys()) != set(SPLITS):
            return None
        for split in SPLITS:
            ds = dd[split]
            if ds.column_names != ["x", "y"]:
                return None
            # touch the data so that truncated arrow files fail here, not later
            ds.data.table.validate(full=True)
    except Exception:  # noqa: BLE001 - any failure means "rebuild"
        return None
    return datasets.DatasetDict({s: dd[s] for s in SPLITS})


def _remove_tree(path: Path) -> None:
    """Move ``path`` aside (atomically) and delete it; tolerate concurrent removal."""
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def build_task(
    family: str,
    params: dict[str, Any] | BaseModel,
    seed: int,
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict:
    """Build (or load from cache) the task's DatasetDict in torch format.

    Splits aux_train, main_train, aux_test, main_test; columns ``x`` (float32 list of length d)
    and ``y`` (float32). The cache folder is keyed by sha256 of {family, version, params, seed};
    it is written atomically and rebuilt if found corrupt. Same inputs give identical data.
    """
    import datasets

    fam = get_family(family)
    validated = validate_params(family, params)
    seed = int(seed)
    payload = _cache_payload(family, validated, seed)
    key = hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"{fam.name}-{key}"

    cached = _try_load(path, payload)
    if cached is not None:
        return cached.with_format("torch")
    if path.exists():
        _remove_tree(path)  # corrupt or partial: rebuild

    root.mkdir(parents=True, exist_ok=True)
    dd = _generate_dataset_dict(fam, validated, seed, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        bars_were_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dd.save_to_disk(str(tmp))
        finally:
            if bars_were_enabled:
                datasets.enable_progress_bars()
        (tmp / META_FILE).write_text(_canonical_json(payload), encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:
            # a concurrent writer won the race; use its folder if it is valid
            if _try_load(path, payload) is None:
                _remove_tree(path)
                os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    loaded = _try_load(path, payload)
    if loaded is None:
        raise RuntimeError(f"failed to load freshly written task cache at {path}")
    return loaded.with_format("torch")
