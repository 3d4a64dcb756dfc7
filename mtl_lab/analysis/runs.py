"""After-the-fact analysis of a finished comparison folder (``mtl-lab analyze RUN_DIR``).

For every run in ``results.parquet`` it reloads the trained network, its reference (the
pretrained network for PT+FT / PT+LP / ridge references, the STL network of the same seed and
n_main for MTL), the task's teacher and probe inputs, and computes the per-unit table, the reuse
summary, PR / ENSD / CKA against the reference, weight change, conservation-law drift from the
run's starting point, path-norms and the norms of the solution. Output: ``analysis.parquet`` (one
flat row per run), ``units.parquet`` (every run's per-unit table) and PNG figures.

Ridge references (``lp_ridge``, ``ntk_ridge``) are kernel regressions on frozen pretrained
features: their checkpoint is the pretrained network, which has no main head. They get the
representation measures of the features their kernel uses (h(x) for LP ridge, ∇_θ f_aux(x) for NTK
ridge) against the pretrained trunk, and a per-unit table of the pretrained units without main
columns; measures of a trained main head or of a gradient-trained solution (reuse shares,
weight change, conservation drift, path-norms, norms of the solution) are NaN for them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import tasks
from mtl_lab.analysis.features import (
    DEFAULT_THRESHOLDS,
    LABELS,
    ReuseThresholds,
    feature_table,
    reuse_summary,
)
from mtl_lab.analysis.weights import layer_changes
from mtl_lab.checkpoints import load_network
from mtl_lab.config import ConfigError, ModelConfig, effective_gamma
from mtl_lab.data import TaskTensors
from mtl_lab.models import DiagonalNetwork, SharedTrunkNetwork
from mtl_lab.progress import tqdm
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.results import read_results

PROBE_SAMPLES = 1000
MAIN_UNIT_COLUMNS = ("head_main", "contrib_main", "beta_main")
REUSE_KEYS = (*(f"share_{label}" for label in LABELS), "main_share_on_aux", "contribution_cosine")


@dataclass
class RunArtifacts:
    """Everything the analyzers need about one run."""

    row: dict[str, Any]
    net: SharedTrunkNetwork
    start: SharedTrunkNetwork | None
    pretrained: SharedTrunkNetwork | None
    reference: SharedTrunkNetwork | None
    teacher: dict[str, Any] | None
    probe: torch.Tensor


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _model_config(row: dict[str, Any]) -> ModelConfig:
    fields = {k.removeprefix("config.model."): _clean(v) for k, v in row.items()
              if k.startswith("config.model.")}
    return ModelConfig(**fields)


def row_gamma(row: dict[str, Any]) -> float:
    """The γ a results row's run used (c · head_init_scale when γ followed c)."""
    follows = _clean(row.get("config.finetune.gamma_follows_rescale"))
    return effective_gamma(row["config.finetune.head_init_scale"],
                           row["config.finetune.rescale"], bool(follows))


def _text(value: Any, default: str) -> str:
    """A string config value of a results row (absent or NaN in rows that predate it)."""
    return value if isinstance(value, str) else default


def starting_network(row: dict[str, Any], pretrained: SharedTrunkNetwork | None,
                     in_dim: int) -> SharedTrunkNetwork | None:
    """Rebuild where the run's gradient training started (deterministic from its config)."""
    from mtl_lab.regimes.base import build_network
    from mtl_lab.regimes.gradient import prepare_finetune

    spec, seed = REGIME_SPECS[row["regime"]], int(row["seed"])
    if spec.trains == "closed_form":  # no gradient training, so no starting point
        return None
    if spec.pretrained:
        if pretrained is None:
            return None
        start = pretrained.select_members([0])
        prepare_finetune(start, [float(row["config.finetune.rescale"])], [row_gamma(row)],
                         [seed], _text(row.get("config.finetune.rescaling"), "none"))
        return start
    return build_network(_model_config(row), in_dim, spec.heads, [seed])


def load_artifacts(out_dir: Path, row: dict[str, Any], results: pd.DataFrame) -> RunArtifacts:
    """Reload the trained run, its reference networks, teacher and probe inputs."""
    spec = REGIME_SPECS[row["regime"]]
    ckpt = out_dir / "checkpoints"
    net, _ = load_network(ckpt / f"run-{row['run_id']}.pt")
    pretrained = None
    key = _clean(row.get("pretrain_key"))
    if key is not None and spec.pretrained:
        pretrained, _ = load_network(ckpt / f"pretrain-{key}.pt")
    params = json.loads(row["task_params"])
    family = row["config.task.family"]
    dd = tasks.build_task(family, params, int(row["seed"]),
                          cache_dir=_clean(row.get("config.task.cache_dir")))
    probe = TaskTensors.from_dataset_dict(dd).x["main_test"][:PROBE_SAMPLES]
    teacher = tasks.task_teacher(family, params, int(row["seed"]))
    reference = None
    if spec.reference == "pretrained":
        reference = pretrained
    elif spec.reference is not None:
        reference = _twin(out_dir, row, results, spec.reference)
    start = starting_network(row, pretrained, probe.shape[1])
    return RunArtifacts(row, net, start, pretrained, reference, teacher, probe)


def _twin(out_dir: Path, row: dict[str, Any], results: pd.DataFrame, regime: str):
    """The network of the ``regime`` run with the same task settings, seed and n_main (MTL's
    reference is its STL twin)."""
    same = results[(results["regime"] == regime) & (results["seed"] == row["seed"])
                   & (results["n_main"] == row["n_main"])
                   & (results["task_params"] == row["task_params"])]
    if same.empty:
        return None
    path = out_dir / "checkpoints" / f"run-{same.iloc[-1]['run_id']}.pt"
    return load_network(path)[0] if path.is_file() else None


def analyze_one(art: RunArtifacts, thresholds: ReuseThresholds = DEFAULT_THRESHOLDS
                ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Summary row and per-unit table of one run."""
    from mtl_lab.analysis import penalties, representation, symmetry

    net, row = art.net, art.row
    if "main" not in net.tasks:
        return _analyze_without_main(art, thresholds)
    start_from = art.pretrained if REGIME_SPECS[row["regime"]].pretrained else None
    table = feature_table(net, start_from, art.teacher, art.probe, thresholds)
    out: dict[str, Any] = {"run_id": row["run_id"], **reuse_summary(table)}
    with torch.no_grad():
        feats = net.features(art.probe)[0].double()
        out["pr"] = float(representation.participation_ratio(feats))
        if art.reference is not None:
            ref = art.reference.features(art.probe)[0].double()
            out["pr_reference"] = float(representation.participation_ratio(ref))
            out["ensd_reference"] = float(representation.ensd(feats, ref))
            out["cka_reference"] = float(representation.linear_cka(feats, ref))
    if art.start is not None:
        changes = layer_changes(net, art.start)
        out["weight_change"] = float(torch.stack([v[0] for v in changes.values()]).mean())
        h0, h1 = symmetry.conservation_values(art.start), symmetry.conservation_values(net)
        change = max(float(symmetry.conservation_change(h0[k], h1[k])[0]) for k in h1)
        out["conservation_drift"] = change  # absolute, in squared-weight units
        out["conservation_drift_rel"] = float(symmetry.relative_to_norm(
            torch.tensor([change], dtype=torch.float64), art.start, net)[0])
    out["path_norm_l1"] = float(symmetry.path_norm(net, q=1.0)[0])
    out["path_norm_l2"] = float(symmetry.path_norm(net, q=2.0)[0])
    out.update(_solution_norms(net, art, penalties))
    return out, table.assign(run_id=row["run_id"])


def _kernel_features(art: RunArtifacts, x: torch.Tensor) -> torch.Tensor:
    """The features a ridge reference regresses on: ∇_θ f_aux (NTK ridge) or h(x) (LP ridge)."""
    from mtl_lab.regimes.ridge import kernel_features

    return kernel_features(art.row["regime"], art.net, x)


def _analyze_without_main(art: RunArtifacts, thresholds: ReuseThresholds
                          ) -> tuple[dict[str, Any], pd.DataFrame]:
    """A run whose network has no main head (ridge references): representation measures of
    the features its kernel uses; NaN for everything that needs a trained main head."""
    from mtl_lab.analysis import representation

    row = art.row
    table = feature_table(art.net, None, art.teacher, art.probe, thresholds)
    for col in MAIN_UNIT_COLUMNS:
        if col in table or col == "contrib_main":
            table[col] = float("nan")
    table["label"] = None
    out: dict[str, Any] = {"run_id": row["run_id"], **dict.fromkeys(REUSE_KEYS, float("nan"))}
    feats = _kernel_features(art, art.probe)
    pretrained = art.reference if art.reference is not None else art.net
    with torch.no_grad():
        ref = pretrained.features(art.probe)[0].double()
    out["pr"] = float(representation.participation_ratio(feats))
    out["pr_reference"] = float(representation.participation_ratio(ref))
    out["ensd_reference"] = float(representation.ensd(feats, ref))
    out["cka_reference"] = float(representation.linear_cka(feats, ref))
    return out, table.assign(run_id=row["run_id"])


def _solution_norms(net: SharedTrunkNetwork, art: RunArtifacts, penalties) -> dict[str, float]:
    if isinstance(net, DiagonalNetwork):
        with torch.no_grad():
            main = net.beta("main")[0].double()
            aux = (art.pretrained.beta("aux")[0] if art.pretrained is not None
                   else net.beta("aux")[0] if "aux" in net.tasks else torch.zeros_like(main))
        aux = aux.double()
        gamma = row_gamma(art.row) if art.row.get("config.finetune.head_init_scale") else 0.0
        return {"l1_main": float(penalties.l1(main)), "l2_main": float(penalties.l2(main)),
                "l12": float(penalties.l12(aux, main)),
                "ptft_penalty": float(penalties.ptft_penalty(main, aux, gamma))}
    w = net.weights[-1].detach().double()
    heads = torch.stack([net.heads[t].detach().double() for t in net.tasks], dim=1)
    return {"f1_main": float(penalties.f1_norm(w, net.heads["main"].detach().double())[0]),
            "group_norm": float(penalties.group_norm(w, heads)[0])}


def analyze_run_dir(out_dir: str | Path, thresholds: ReuseThresholds = DEFAULT_THRESHOLDS,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Analyze every run of a comparison folder; writes analysis.parquet and units.parquet."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise ConfigError(f"folder not found: {out_dir}")
    if not out_dir.is_dir():
        raise ConfigError(f"not a folder: {out_dir}")
    results = read_results(out_dir)
    if results.empty:
        raise ConfigError(f"no results.parquet in {out_dir}: run a comparison there first")
    if "task_params" not in results:
        raise ConfigError(f"{out_dir}/results.parquet was written by an older mtl-lab without "
                          "task parameters per run: rerun the comparison into a new folder")
    kinds = set(results.get("config.model.kind", pd.Series(dtype=object)).dropna())
    deep = sorted(kinds - {"relu", "diagonal"})
    if deep:
        raise ConfigError(f"{out_dir} holds deep runs (model.kind {', '.join(deep)}): analyze "
                          "reads the engine's ReLU and diagonal networks; a deep run's layer-wise "
                          "PR, ENSD and CKA are already in results.parquet (layer.* columns) and "
                          f"drawn by `mtl-lab report {out_dir}`")
    missing = [r for r in results["run_id"]
               if not (out_dir / "checkpoints" / f"run-{r}.pt").is_file()]
    if missing:
        raise ConfigError(f"{out_dir}: checkpoints missing for runs {missing[:5]}")
    rows, units = [], []
    for row in tqdm(results.to_dict("records"), desc="analyze", unit="run",
                    disable=not progress):
        summary, table = analyze_one(load_artifacts(out_dir, row, results), thresholds)
        rows.append(summary)
        units.append(table)
    summaries = pd.DataFrame(rows)
    stale = [c for c in summaries.columns if c != "run_id" and c in results.columns]
    analysis = results.drop(columns=stale).merge(summaries, on="run_id", how="left")
    unit_table = pd.concat(units, ignore_index=True)
    analysis.to_parquet(out_dir / "analysis.parquet", index=False)
    unit_table.to_parquet(out_dir / "units.parquet", index=False)
    return analysis, unit_table
