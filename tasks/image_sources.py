"""Cheap facts about a class-split source, for validating and printing configs before any compute.

* :func:`missing_local_source` — the problem with a source that names a local file or folder that
  does not exist (the rule of :func:`tasks.class_split.load_source`: ``digits`` is built in; a
  path that exists, starts with ``.``, ``/`` or ``~``, or ends in ``.parquet``/``.arrow`` is
  local; anything else is a hub name, which only loading can check);
* :func:`source_input_shape` — the ``(C, H, W)`` of the source's images, read from its first
  image as :func:`~tasks.class_split.build_class_split` reads it (it loads the source, so it is
  for ``mtl-lab config``, not for validation).

Example:
    >>> missing_local_source("digits") is None, missing_local_source("./no/such/folder")
    (True, "no such file or folder: './no/such/folder' (relative to the working directory)")
    >>> source_input_shape({"source": "digits"})
    (1, 8, 8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".parquet", ".arrow")


def missing_local_source(source: str) -> str | None:
    """What is wrong with a local source that is not there (None when it exists or is not
    local)."""
    if source == "digits":
        return None
    path = Path(source).expanduser()
    local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in LOCAL_SUFFIXES
    if not local or path.exists():
        return None
    where = "" if path.is_absolute() else " (relative to the working directory)"
    return f"no such file or folder: {source!r}{where}"


def source_input_shape(params: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the images of a class-split source (loads the source)."""
    from tasks.class_split import ClassSplitParams, _as_array, _column, load_source

    p = ClassSplitParams.model_validate({**params, "n_main": max(2, params.get("main_classes", 2))})
    dd = load_source(p.source)
    first = dd[next(iter(dd))]
    image = _column(first, p.image_column, "image", p.source)
    return tuple(int(v) for v in _as_array(first[0][image]).shape)
