"""Sweep report: swept axes, figures, HTML page and the numbers behind the ratio maps."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from mtl_lab.sweeps.report import relative_map, swept_columns, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERLAP = "config.task.params.overlap"
K_MAIN = "config.task.params.k_main"
RESCALE = "config.finetune.rescale"
BASE = {"stl": ("STL", 4.0), "mtl": ("MTL", 2.0), "ptft": ("PT+FT", 1.0)}


def _row(regime: str, seed: int, n: int, overlap: int, k: int, c: float) -> dict:
    """One synthetic run: loss = base × (1 + overlap) × k / n, PT+FT scaled by c^0.5, ±5 % noise."""
    label, base = BASE[regime]
    loss = base * (1 + overlap) * k / n * (c**0.5 if regime == "ptft" else 1.0)
    loss *= 1.05 if seed else 0.95
    return {
        "run_id": f"{regime}-{seed}-{n}-{overlap}-{k}-{c}", "regime": regime,
        "regime_label": label, "seed": seed, "n_main": n, "test_loss_main": loss,
        "test_loss_aux": 0.01, "train_loss": 1e-6, "status": "converged", "wall_time": 0.1,
        "config.output_dir": f"/tmp/out-{overlap}-{k}", "config.model.width": 100,
        "config.model.init_scale": 1e-3, "config.training.lr": 0.1,
        "config.task.params.correlation": "[1.0, 1.0]", OVERLAP: overlap, K_MAIN: k,
        RESCALE: c, "config.finetune.head_init_scale": 1e-3,
    }


def synthetic(regimes=("stl", "mtl", "ptft")) -> pd.DataFrame:
    """STL/MTL/PT+FT × 2 seeds × n_main {8,16,32} × overlap {0,5} × k_main {1,4}; PT+FT × c."""
    rows = []
    for regime, seed, n, overlap, k in itertools.product(regimes, (0, 1), (8, 16, 32), (0, 5),
                                                         (1, 4)):
        for c in ((1.0, 0.1) if regime == "ptft" else (1.0,)):
            rows.append(_row(regime, seed, n, overlap, k, c))
    return pd.DataFrame(rows)


def test_swept_columns_finds_exactly_the_axes():
    assert sorted(swept_columns(synthetic())) == sorted([OVERLAP, K_MAIN, RESCALE])
    assert swept_columns(synthetic(("mtl",))) == [OVERLAP, K_MAIN]


def test_relative_map_is_log2_of_mean_ratio(tmp_path):
    table = synthetic()
    matrix = relative_map(table, "PT+FT", "MTL", x="n_main", y=OVERLAP,
                          path=tmp_path / "map.png", where={RESCALE: 0.1})
    assert list(matrix.columns) == [8, 16, 32] and list(matrix.index) == [0, 5]
    for n, overlap in itertools.product((8, 16, 32), (0, 5)):
        cell = table[(table["n_main"] == n) & (table[OVERLAP] == overlap)]
        top = cell[(cell["regime"] == "ptft") & (cell[RESCALE] == 0.1)]["test_loss_main"].mean()
        bottom = cell[cell["regime"] == "mtl"]["test_loss_main"].mean()
        assert matrix.loc[overlap, n] == pytest.approx(np.log2(top / bottom))
    # The known pattern: PT+FT(c=0.1) / MTL = 0.5 × 0.1^0.5 everywhere.
    assert np.allclose(matrix.to_numpy(), np.log2(0.5 * 0.1**0.5))
    assert (tmp_path / "map.png").read_bytes()[:8] == PNG_MAGIC


def test_write_report_writes_page_and_figures(tmp_path):
    page = write_report(synthetic(), tmp_path, title="Synthetic sweep")
    assert page == tmp_path / "report" / "index.html"
    text = page.read_text()
    pngs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"loss_vs_n.png", "sparsity.png"} <= names
    assert sum(n.startswith("ratio_ptft_mtl") for n in names) == 2  # one per c
    assert sum(n.startswith("ratio_ptft_stl") for n in names) == 2
    for png in pngs:
        assert f"figures/{png.name}" in text
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    referenced = set(re.findall(r"src='figures/([^']+)'", text))
    assert referenced == names
    assert "Synthetic sweep" in text and OVERLAP in text and "skipped" not in text
    assert "PT+FT (c=0.1)" in text  # summary table splits PT+FT by c


def test_one_regime_report_skips_ratio_maps(tmp_path):
    page = write_report(synthetic(("mtl",)), tmp_path, title="MTL only")
    text = page.read_text()
    names = {p.name for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert not any(n.startswith("ratio") for n in names)
    assert "PT+FT / MTL ratio map skipped" in text and "PT+FT / STL ratio map skipped" in text
    assert {"loss_vs_n.png", "sparsity.png"} <= names


def test_diverged_runs_are_left_out(tmp_path):
    table = synthetic()
    table.loc[0, "test_loss_main"] = np.inf
    table.loc[0, "status"] = "diverged"
    text = write_report(table, tmp_path).read_text()
    assert "1 without a finite test loss" in text
