"""The results store of an output folder: one flat row per run in ``results.parquet``.

Training (:mod:`mtl_lab.sweeps.execute`, :mod:`mtl_lab.comparison`) writes it, the after-the-fact
analysis and the reports read it; neither side imports the other. The folder's file names live
here too: a comparison folder holds its resolved ``config.yaml``, a sweep folder its
``sweep.yaml``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from mtl_lab.config import OMITTED_AT_DEFAULT
from mtl_lab.errors import ConfigError

RESULTS_FILE = "results.parquet"
CONFIG_FILE = "config.yaml"  # a comparison folder's configuration
SWEEP_FILE = "sweep.yaml"  # a sweep folder's sweep file


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """The results table of an output folder (empty if none); a corrupt file is an error."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return pd.DataFrame()
    try:
        table = pd.read_parquet(path)
    except Exception as err:
        raise ConfigError(f"cannot read existing results {path}: {err}; move it away to start "
                          "afresh (nothing was overwritten)") from err
    return with_omitted_defaults(table)


def with_omitted_defaults(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose run id left a key out at its default (:data:`~mtl_lab.config.OMITTED_AT_DEFAULT`)
    get that default in the key's column, wherever other rows made the column exist: a sweep
    over ``finetune.rescaling`` then reads ``none`` beside ``enorm``, not a missing value that
    tables and figures would drop.

    >>> t = pd.DataFrame({"config.finetune.rescaling": [None, "enorm"]})
    >>> with_omitted_defaults(t)["config.finetune.rescaling"].tolist()
    ['none', 'enorm']
    """
    filled = {}
    for dotted, default in OMITTED_AT_DEFAULT.items():
        column = f"config.{dotted}"
        if column in table and not isinstance(default, dict) and table[column].isna().any():
            filled[column] = table[column].astype(object).where(table[column].notna(), default)
    return table.assign(**filled) if filled else table


def uniform_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every column of one type: where a config value is a list in some rows
    (stored as its string, ``'[0.9, 0.0]'``) and a number in others (a sweep over correlation
    patterns), the numbers become strings too, as Parquet holds one type per column.

    >>> t = uniform_columns(pd.DataFrame({"c": [1.0, "[0.9, 0.0]"], "n": [1, 2]}))
    >>> t["c"].tolist(), t["n"].tolist()
    (['1.0', '[0.9, 0.0]'], [1, 2])
    """
    mixed = {}
    for name in table.select_dtypes(include="object").columns:
        values = table[name].dropna()
        is_str = values.map(lambda v: isinstance(v, str))
        if is_str.any() and not is_str.all():
            mixed[name] = table[name].map(lambda v: v if v is None or isinstance(v, str)
                                          or (isinstance(v, float) and v != v) else str(v))
    return table.assign(**mixed) if mixed else table


def write_results(out_dir: str | Path, table: pd.DataFrame) -> None:
    """Atomic write: a killed process never leaves a half-written results file. The file gets
    the same permissions as every other file the lab writes (the umask's, not mkstemp's 0600).
    Columns are made uniform first (:func:`uniform_columns`)."""
    table = uniform_columns(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = str(out_dir / f".results.{os.getpid()}.{uuid.uuid4().hex[:8]}.parquet")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / RESULTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
