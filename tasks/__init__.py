"""Teacher–student task families exposed as Hugging Face datasets.

Importing ``tasks`` auto-imports every module in this package (so a new family is one file
with a ``@register_family(...)`` generate function) and loads entry points in the group
``mtl_lab.tasks``. Use :func:`build_task` to get a cached ``DatasetDict``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import warnings

from tasks.registry import (
    CACHE_ENV_VAR,
    TaskFamily,
    UnknownFamilyError,
    build_task,
    default_cache_dir,
    get_family,
    list_families,
    load_family_module,
    register_family,
    task_cache_key,
    task_cache_path,
    task_teacher,
    validate_params,
)
from tasks.sampling import SPLITS

ENTRY_POINT_GROUP = "mtl_lab.tasks"

__all__ = [
    "CACHE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "SPLITS",
    "TaskFamily",
    "UnknownFamilyError",
    "build_task",
    "default_cache_dir",
    "discover_families",
    "get_family",
    "list_families",
    "load_family_module",
    "register_family",
    "task_cache_key",
    "task_cache_path",
    "task_teacher",
    "validate_params",
]


def discover_families() -> list[str]:
    """Import all modules of the ``tasks`` package and ``mtl_lab.tasks`` entry points.

    Returns the sorted list of registered family names afterwards. A failing entry point
    emits a warning instead of breaking ``import tasks``.
    """
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        importlib.import_module(info.name)
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken metadata must not break import
        eps = ()
    for ep in eps:
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            warnings.warn(
                f"failed to load task entry point {ep.name!r} ({ep.value}): {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
    return list_families()


discover_families()
