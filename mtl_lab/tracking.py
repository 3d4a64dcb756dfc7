"""Loggers: Lightning CSV (always) and TensorBoard (optional) per training group, and one wandb
run per training run, offline unless the config says online (never waits on the network)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtl_lab.config import ComparisonConfig


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners (accelerator, tips) that would drown the output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LitLogger|"
                            r"configure_optimizers|`training_step` returned `None`|LeafSpec).*")


def group_loggers(cfg: ComparisonConfig, out_dir: Path) -> Callable[[str], list]:
    """A factory of Lightning loggers for one training group, writing under ``out_dir/logs``."""

    def make(name: str) -> list:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        loggers: list = []
        if cfg.logging.csv:
            loggers.append(CSVLogger(out_dir / "logs", name=name))
        if cfg.logging.tensorboard:
            loggers.append(TensorBoardLogger(out_dir / "tensorboard", name=name))
        return loggers

    return make


def start_wandb_run(wandb_cfg: dict[str, Any], out_dir: Path, **fields: Any):
    """``wandb.init`` with the lab's defaults: offline unless configured online, files under
    ``out_dir``, no console capture or system stats, a new run per call."""
    import wandb

    mode = wandb_cfg.get("mode", "offline")
    if mode == "offline":
        os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(project=wandb_cfg.get("project", "mtl-lab"),
                      entity=wandb_cfg.get("entity"), dir=str(out_dir), mode=mode,
                      reinit="create_new",
                      settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
                      **fields)


def log_run_to_wandb(cfg: ComparisonConfig, out_dir: Path, row: dict[str, Any],
                     history: list[tuple[int, float]]) -> str | None:
    """One wandb run per training run: grouped by comparison, tagged by regime, with the full
    config, the loss curve and the final metrics. Returns the wandb run id (None if disabled)."""
    if not cfg.logging.wandb.enabled:
        return None
    run = start_wandb_run(
        cfg.logging.wandb.model_dump(),
        out_dir,
        group=cfg.name,
        job_type=row["regime"],
        tags=[row["regime"], f"seed={row['seed']}"],
        name=f"{row['regime']}-seed{row['seed']}-n{row['n_main']}",
        config={k: v for k, v in row.items() if k.startswith(("config.", "regime", "seed",
                                                               "n_main", "run_id"))},
    )
    for step, loss in history:
        if math.isfinite(loss):
            run.log({"train/loss": loss}, step=step)
    finals = {k: v for k, v in row.items() if isinstance(v, int | float) and
              not k.startswith("config.") and not isinstance(v, bool)}
    for key, value in finals.items():
        run.summary[key] = value
    run_id = run.id
    run.finish()
    return run_id


def add_to_wandb_run(cfg_logging: dict[str, Any], out_dir: Path, run_id: str,
                     summary: dict[str, Any], tables: dict[str, Any] | None = None) -> None:
    """Resume an existing wandb run (offline: a new local segment with the same id, merged on
    ``wandb sync``) and add summary values and tables to it."""
    import wandb

    run = start_wandb_run(cfg_logging.get("wandb") or {}, out_dir, id=run_id, resume="allow")
    for key, value in summary.items():
        run.summary[key] = value
    if tables:
        run.log({name: wandb.Table(dataframe=frame) for name, frame in tables.items()})
    run.finish()


def log_figures_run(wandb_cfg: dict[str, Any], out_dir: Path, group: str | None, job_type: str,
                    tables: dict[str, Any], figures: list[Path]) -> str:
    """One wandb run in ``group`` holding tables (name → DataFrame) and PNG figures (logged as
    ``figures/<file stem>``), for the analysis and sweep reports. Returns the run id."""
    import wandb

    run = start_wandb_run(wandb_cfg, out_dir, group=group, job_type=job_type, name=job_type)
    run.log({**{name: wandb.Table(dataframe=frame) for name, frame in tables.items()},
             **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    run_id = run.id
    run.finish()
    return run_id


def read_wandb_history(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read an offline ``run-*.wandb`` file: (history rows, final summary).

    The file is a 7-byte header (":W&B", magic, version) followed by LevelDB-style log records in
    32 KiB blocks (4-byte checksum, 2-byte length, 1-byte type: full/first/middle/last), each
    holding a protobuf ``Record``. Lets tests and notebooks check offline runs without a server.
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    block, pos, pending = 32768, 7, b""
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a header never straddles a block: skip the padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        which = record.WhichOneof("record_type")
        items = []
        if which == "history":
            items = record.history.item
        elif which == "summary":
            items = record.summary.update
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}
        if which == "history":
            history.append(row)
        elif which == "summary":
            summary.update(row)
    return history, summary
