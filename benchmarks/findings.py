"""The published findings (SCIENCE.md §4) read off finished experiment sweeps, one verdict each.

Give the folder that holds the sweeps of ``configs/experiments/`` (each in a sub-folder named
after its file, as ``mtl-lab sweep configs/experiments/<name>.yaml -o <root>/<name>`` makes
them); every finding whose sweep is there is checked on its mean test losses over seeds:

1. ``diagonal_shared``: at the smallest n_main, overlap = k_aux → MTL and PT+FT below STL; overlap 0
   → STL below both.
2. ``diagonal_nested``: MTL's sparsity dependence (decades of test loss between the largest and the
   smallest k_main, mean over n_main with a finite ratio) below PT+FT's at c = 0.1.
3. ``relu_shared``: the all-0.9 pattern → PT+FT below MTL and STL (mean over n_main);
   ``relu_correlation_magnitude``: PT+FT/STL below 1 at ρ = 1 for every magnitude and at magnitude
   1 for every ρ, above 1 somewhere else (it needs the direction or the magnitude).
4. ``diagonal_nested``: PT+FT's sparsity dependence at c ≤ 0.1 a decade above c = 1;
   ``relu_nested``: PT+FT's dependence on m_main at c = 0.1 above c = 1 and c = 10.
6. ``init_scale``: rich trunks (s = 1e-3) beat lazy ones (s = 1) for MTL and PT+FT at ρ = 1.

And two of the symmetry studies (SCIENCE.md §6–7):

* ``width``: the narrowest trunk whose mean training loss reaches ``FITS`` is wider for MTL (it
  represents both tasks' features) than for STL (the main task's alone).
* ``rescaling``: ENorm takes a pretraining from a small balanced initialisation to h ≈ 0 and
  changes nothing else (mean |h_j| at the finetuning start below 10⁻³ of the pretrained one, and
  the median ENorm / c = 1 test-loss ratio within 10 %); the path-conditioned rescaling's record
  against c = 1 is printed beside it.

Exit status 1 when a checked finding fails or when no sweep was found (an empty comparison).

    python benchmarks/findings.py runs/experiments
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from mtl_lab.results import read_results

LOSS = "test_loss_main"


def mean_loss(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    return rows.groupby(by)[LOSS].mean()


def dependence(rows: pd.DataFrame, column: str) -> float:
    """Decades of mean test loss between the largest and smallest value of ``column``, averaged
    over the n_main where both are positive."""
    table = mean_loss(rows, ["n_main", column]).unstack(column)
    lo, hi = table.columns.min(), table.columns.max()
    ratios = [math.log10(h / lo_) for lo_, h in zip(table[lo], table[hi], strict=True)
              if lo_ > 0 and h > 0]
    return sum(ratios) / len(ratios) if ratios else math.nan


def verdict(ok: bool, text: str) -> bool:
    print(f"  [{'yes' if ok else 'NO'}] {text}")
    return ok


def finding_1(rows: pd.DataFrame) -> bool:
    n = rows["n_main"].min()
    loss = mean_loss(rows[rows.n_main == n], ["config.task.params.overlap", "regime"])
    full, none = loss[loss.index.levels[0].max()], loss[0]
    return (verdict(full["mtl"] < full["stl"] and full["ptft"] < full["stl"],
                    f"shared, n_main {n}: MTL {full['mtl']:.3g}, PT+FT {full['ptft']:.3g} < STL "
                    f"{full['stl']:.3g}")
            & verdict(none["stl"] < min(none["mtl"], none["ptft"]),
                      f"disjoint, n_main {n}: STL {none['stl']:.3g} < MTL {none['mtl']:.3g}, "
                      f"PT+FT {none['ptft']:.3g}"))


def nested_dependence(rows: pd.DataFrame) -> dict[str, float]:
    return {case: dependence(part, "config.task.params.k_main")
            for case, part in rows.groupby("sweep.setting")}


def finding_2(rows: pd.DataFrame) -> bool:
    s = nested_dependence(rows)
    return verdict(s["mtl"] < s["ptft_c0.1"], f"k_main dependence (decades): MTL {s['mtl']:.2f} "
                   f"< PT+FT c=0.1 {s['ptft_c0.1']:.2f}")


def finding_3(shared: pd.DataFrame | None, magnitude: pd.DataFrame | None) -> bool:
    ok = True
    if shared is not None:
        loss = mean_loss(shared[shared["sweep.pattern"] == "all_0.9"], ["regime"])
        ok &= verdict(loss["ptft"] < min(loss["mtl"], loss["stl"]),
                      f"ρ = 0.9 (mean over n_main): PT+FT {loss['ptft']:.3g} < MTL "
                      f"{loss['mtl']:.3g}, STL {loss['stl']:.3g}")
    if magnitude is not None:
        loss = mean_loss(magnitude, ["config.task.params.correlation",
                                     "config.task.params.magnitude", "regime"]).unstack("regime")
        ratio = loss["ptft"] / loss["stl"]
        rho, mag = ratio.index.get_level_values(0), ratio.index.get_level_values(1)
        aligned = ratio[(rho == rho.max()) | (mag == mag.max())]
        other = ratio[(rho != rho.max()) & (mag != mag.max())]
        ok &= verdict(bool((aligned < 1).all()) and bool((other > 1).any()),
                      f"PT+FT/STL: max {aligned.max():.2f} where direction or magnitude is "
                      f"shared; up to {other.max():.2f} where neither is")
    return ok


def finding_4(diagonal: pd.DataFrame | None, relu: pd.DataFrame | None) -> bool:
    ok = True
    if diagonal is not None:
        s = nested_dependence(diagonal)
        ok &= verdict(min(s["ptft_c0.1"], s["ptft_c0.01"]) > s["ptft_c1"] + 1,
                      f"diagonal k_main dependence: c=0.01 {s['ptft_c0.01']:.2f}, c=0.1 "
                      f"{s['ptft_c0.1']:.2f}, c=1 {s['ptft_c1']:.2f} decades")
    if relu is not None:
        s = {case: dependence(part, "config.task.params.m_main")
             for case, part in relu.groupby("sweep.setting")}
        ok &= verdict(s["ptft_c0.1"] > max(s["ptft_c1"], s["ptft_c10"]),
                      f"ReLU m_main dependence: c=0.1 {s['ptft_c0.1']:.2f}, c=1 "
                      f"{s['ptft_c1']:.2f}, c=10 {s['ptft_c10']:.2f} decades")
    return ok


def finding_6(rows: pd.DataFrame) -> bool:
    shared = rows[rows["config.task.params.correlation"].astype(float) == 1.0]
    loss = mean_loss(shared, ["regime", "sweep.trunk"])
    return verdict(all(loss[r]["rich"] < loss[r]["lazy"] for r in ("mtl", "ptft")),
                   "ρ = 1, rich vs lazy: " + ", ".join(
                       f"{r} {loss[r]['rich']:.3g} vs {loss[r]['lazy']:.3g}"
                       for r in ("stl", "mtl", "ptft")))


FITS = 1e-4  # a mean training loss below this: the trunk represents the task


def narrowest_fit(rows: pd.DataFrame) -> dict[str, float]:
    """Per regime, the smallest width whose mean training loss is below :data:`FITS`."""
    loss = rows.groupby(["regime", "config.model.width"])["train_loss"].mean()
    return {regime: min((w for w, v in part.droplevel(0).items() if v < FITS), default=math.inf)
            for regime, part in loss.groupby(level=0)}


def width_finding(rows: pd.DataFrame) -> bool:
    fit = narrowest_fit(rows)
    return verdict(fit.get("mtl", math.inf) > fit.get("stl", math.inf),
                   "narrowest trunk that fits: " + ", ".join(f"{r} {w:g}"
                                                             for r, w in sorted(fit.items())))


def rescaling_finding(rows: pd.DataFrame) -> bool:
    ptft = rows[rows["regime"] == "ptft"]
    h = ptft.groupby("sweep.case")[["h_abs_mean_pretrained", "h_abs_mean_start"]].mean()
    pairs = ptft.pivot_table(index=["config.task.params.correlation", "n_main", "seed"],
                             columns="sweep.case", values=LOSS)
    ratio = float((pairs["enorm"] / pairs["c=1"]).median())
    wins = int((pairs["path_conditioned"] < pairs["c=1"]).sum())
    print(f"  [info] path-conditioned below c = 1 in {wins} of {len(pairs)} (ρ, n_main, seed) "
          f"pairs, median ratio {float((pairs['path_conditioned'] / pairs['c=1']).median()):.2f}")
    start, before = h.loc["enorm", "h_abs_mean_start"], h.loc["enorm", "h_abs_mean_pretrained"]
    return verdict(start < 1e-3 * before and abs(ratio - 1) < 0.1,
                   f"ENorm: mean |h| {before:.2g} → {start:.2g}; median loss ratio to c = 1 "
                   f"{ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding the experiment sweeps")
    args = parser.parse_args(argv)
    sweeps = {}
    for path in sorted(args.root.iterdir()) if args.root.is_dir() else []:
        rows = read_results(path) if path.is_dir() else pd.DataFrame()
        if not rows.empty:
            sweeps[path.name.removesuffix(".quick")] = rows
    if not sweeps:
        print(f"no finished sweep under {args.root}: nothing to compare (a failure)")
        return 1
    print(f"sweeps: {', '.join(f'{k} ({len(v)} runs)' for k, v in sweeps.items())}")
    get = sweeps.get
    checks = [("1 shared features help, disjoint hurt", ["diagonal_shared"],
               lambda: finding_1(get("diagonal_shared"))),
              ("2 nested regime narrower for MTL", ["diagonal_nested"],
               lambda: finding_2(get("diagonal_nested"))),
              ("3 correlated features help PT+FT", ["relu_shared", "relu_correlation_magnitude"],
               lambda: finding_3(get("relu_shared"), get("relu_correlation_magnitude"))),
              ("4 rescaling c < 1 → nested regime", ["diagonal_nested", "relu_nested"],
               lambda: finding_4(get("diagonal_nested"), get("relu_nested"))),
              ("rich vs lazy trunks", ["init_scale"], lambda: finding_6(get("init_scale"))),
              ("width: MTL needs the union of both tasks' features", ["width"],
               lambda: width_finding(get("width"))),
              ("rescaling: ENorm keeps a balanced pretraining", ["rescaling"],
               lambda: rescaling_finding(get("rescaling")))]
    results = []
    for title, needs, check in checks:
        if any(name in sweeps for name in needs):
            print(f"finding {title}:")
            results.append(check())
    print(f"{sum(results)} of {len(results)} findings reproduced")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
