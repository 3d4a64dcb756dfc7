"""The ``mtl-lab`` command line: thin shells over documented Python functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtl_lab.config import dump_config, load_config, read_yaml
from mtl_lab.errors import InputError
from mtl_lab.interrupts import as_interrupted, stop_on_signals
from mtl_lab.regime_specs import REGIME_SPECS


def _cmd_run(args: argparse.Namespace) -> int:
    from mtl_lab.comparison import run_comparison
    from mtl_lab.results import read_results

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    out = args.output or cfg.resolved_output_dir()
    results = run_comparison(cfg, out, progress=False if args.no_progress else None)
    print(f"\nTest loss on the main task (mean over {len(cfg.seeds)} seed(s)):")
    _print_table(results)
    print(f"\nResults: {out}/results.parquet ({len(results)} runs of this config; the folder "
          f"holds {len(read_results(Path(out)))}), figure {out}/comparison.png")
    return 0


def _print_table(results, metric: str = "test_loss_main") -> None:
    """The table of mean main-task test losses with the flags of unfinished runs under it."""
    import pandas as pd

    from mtl_lab.flags import flags_note
    from mtl_lab.tables import marked_table

    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(marked_table(results, metric).to_string())
    note = flags_note(results)
    if note:
        print(note)


def _cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mtl_lab.analysis.report import analyze

    analyze(args.run_dir, progress=not args.no_progress)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mtl_lab.sweeps.run import plan_sweep, results_table, run_sweep, sweep_dir

    plan = plan_sweep(args.sweep)
    done = set(results_table(sweep_dir(plan, args.output)).get("run_id", []))
    print(plan.describe(done))
    if args.dry_run:
        return 0
    results = run_sweep(args.sweep, args.output, args.executor, args.address,
                        progress=not args.no_progress, jobs=args.jobs)
    print(f"\nResults: {sweep_dir(plan, args.output)}/results.parquet ({len(results)} runs); "
          f"report: mtl-lab report {sweep_dir(plan, args.output)}")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from mtl_lab.sweeps.run import results_table

    table = results_table(args.folder)
    if table.empty:
        raise InputError(f"no results.parquet in {args.folder}")
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {len(table)} rows to {args.csv}")
    if args.parquet:
        table.to_parquet(args.parquet, index=False)
        print(f"wrote {len(table)} rows to {args.parquet}")
    if not (args.csv or args.parquet):
        metric = "test_loss_main"
        if args.relative:
            from mtl_lab.tables import RELATIVE_SUFFIX, with_relative_to_stl

            table, metric = with_relative_to_stl(table), metric + RELATIVE_SUFFIX
        what = ("main-task test loss / STL's at the smallest n_main" if args.relative
                else "mean test loss on the main task")
        print(f"{len(table)} runs; {what} (over seeds; every other setting that varies is a "
              "row or column):")
        _print_table(table, metric)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mtl_lab.sweeps.report import THEORY_FILE, write_report
    from mtl_lab.sweeps.run import folder_logging, results_table

    table = results_table(args.folder)
    if table.empty:
        raise InputError(f"no results.parquet in {args.folder}")
    wandb = dict(folder_logging(args.folder).get("wandb") or {})
    if args.wandb:
        wandb["enabled"] = True
    path = write_report(table, Path(args.folder), title=args.title or Path(args.folder).name,
                        wandb=wandb, theory=args.theory)
    print(f"report: {path}" + ("; figures logged to wandb" if wandb.get("enabled") else ""))
    if args.theory:
        import pandas as pd

        theory = pd.read_csv(path.parent / THEORY_FILE)
        covered = int(theory["theory_test_loss_main"].notna().sum())
        print(f"theory: {covered} of {len(theory)} runs predicted ({path.parent / THEORY_FILE}; "
              "the page says which runs the theory does not cover)")
    return 0


def _cmd_families(args: argparse.Namespace) -> int:
    import tasks
    from tasks.class_split import ClassSplitParams

    for name in tasks.list_families():
        fields = tasks.get_family(name).params_model.model_fields
        print(f"{name}: {', '.join(fields)}")
    print(f"class_split (real images; model.kind resnet or vit): "
          f"{', '.join(ClassSplitParams.model_fields)}")
    return 0


def _cmd_symmetry(args: argparse.Namespace) -> int:
    from mtl_lab.symmetry import Architecture, count_laws, known_laws

    if args.arch.endswith((".yaml", ".yml")) or Path(args.arch).is_file():
        return _count_config(args)
    arch = Architecture.parse(args.arch, bias=args.bias,
                              activation="linear" if args.linear else "relu")
    result = count_laws(arch, seed=args.seed, tol=args.tol, max_params=args.max_params)
    print(result.describe())
    if args.known:
        for name in known_laws(arch).names:
            print(f"  {name}")
    return 0


def _count_config(args: argparse.Namespace) -> int:
    """``mtl-lab symmetry count CONFIG``: every fit the config trains (mtl_lab.symmetry.configs),
    or every distinct one of a sweep file's points; exit 2 when one of them is beyond the exact
    count's size limit (its closed form is printed)."""
    from mtl_lab.symmetry import TooLarge, count_laws, fits_of, known_laws

    if args.bias or args.linear:
        raise InputError("--bias and --linear describe an ARCH string; a config's model block "
                         "says whether the trunk has biases")
    if "base" in read_yaml(args.arch):  # a sweep file: the networks of all its points, once
        from mtl_lab.sweeps.spec import load_sweep

        configs = [point.cfg for point in load_sweep(args.arch)[1]]
    else:
        configs = [load_config(args.arch)]
    refused: dict[str, None] = {}  # architectures, in order, once
    counts: dict[object, object] = {}  # one count per architecture (STL and PT+FT share theirs)
    for fit in dict.fromkeys(fit for cfg in configs for fit in fits_of(cfg)):
        if fit.arch is None:
            print(f"{fit.label}: {fit.reason}")
            continue
        times = f" × {fit.blocks} independent blocks" if fit.blocks > 1 else ""
        if fit.arch not in counts:
            try:
                counts[fit.arch] = count_laws(fit.arch, seed=args.seed, tol=args.tol,
                                              max_params=args.max_params)
            except TooLarge as err:
                counts[fit.arch] = err
        result = counts[fit.arch]
        if isinstance(result, TooLarge):
            refused[str(fit.arch)] = None
            known = known_laws(fit.arch).count
            print(f"{fit.label}: not counted — {result}; closed form: {known * fit.blocks} laws")
            continue
        print(f"{fit.label}{times}: {result.describe()}")
        if fit.blocks > 1:
            print(f"  → {result.laws * fit.blocks} conservation laws in all")
        if args.known:
            for name in known_laws(fit.arch).names:
                print(f"  {name}")
    if refused:
        print(f"error: {', '.join(refused)}: too large for the exact count (shrink model.width "
              "or task.params.d in a copy of the config, or raise --max-params)", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    regimes = ", ".join(f"{s.name} ({s.label})" for s in REGIME_SPECS.values())
    run = sub.add_parser("run", help="run a comparison (regimes × seeds × n_main on one task)",
                         epilog=f"regimes: {regimes}")
    run.add_argument("config", help="YAML comparison config")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. seeds=[0,1]")
    run.add_argument("--output", "-o", help="output folder (default: runs/<name>)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(func=_cmd_run)
    cfg = sub.add_parser("config", help="print the fully resolved config")
    cfg.add_argument("config")
    cfg.add_argument("overrides", nargs="*")
    cfg.set_defaults(func=_cmd_config)
    ana = sub.add_parser("analyze", help="feature reuse, representations, symmetries, regimes")
    ana.add_argument("run_dir", help="an output folder of `mtl-lab run`")
    ana.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ana.set_defaults(func=_cmd_analyze)
    swp = sub.add_parser("sweep", help="run a sweep file (a base config and axes)")
    swp.add_argument("sweep", help="YAML sweep file")
    swp.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    swp.add_argument("--executor", choices=["local", "ray"], default="local")
    swp.add_argument("--address", help="Ray cluster address (default: a local instance)")
    swp.add_argument("--jobs", type=int, default=1,
                     help="local executor: train this many groups at once in worker processes "
                          "(each with cores/jobs threads; 2 on a 2-core CPU is ~1.5× faster)")
    swp.add_argument("--output", "-o", help="output folder (default: runs/<name>)")
    swp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    swp.set_defaults(func=_cmd_sweep)
    res = sub.add_parser("results", help="print or export a results table")
    res.add_argument("folder")
    res.add_argument("--csv", help="write the table as CSV to this path")
    res.add_argument("--parquet", help="write the table as parquet to this path")
    res.add_argument("--relative", action="store_true",
                     help="divide by STL's mean test loss at the smallest n_main (per setting)")
    res.set_defaults(func=_cmd_results)
    rep = sub.add_parser("report", help="HTML report with figures for a sweep folder")
    rep.add_argument("folder")
    rep.add_argument("--title")
    rep.add_argument("--wandb", action="store_true",
                     help="also log the figures and table to wandb (offline unless the sweep's "
                          "logging.wandb.mode says online); on by default when the sweep logged")
    rep.add_argument("--theory", action="store_true",
                     help="add the implicit-bias theory's predicted test loss of diagonal runs "
                          "(STL, PT+FT, MTL; mtl_lab.theory) as a column, a table and dashed "
                          "lines in the loss-vs-n figure")
    rep.set_defaults(func=_cmd_report)
    fam = sub.add_parser("families", help="list the registered task families")
    fam.set_defaults(func=_cmd_families)

    sym = sub.add_parser("symmetry", help="symmetry tools (SCIENCE.md §6)")
    sym_sub = sym.add_subparsers(dest="symmetry_command", required=True)
    cnt = sym_sub.add_parser("count", help="count the independent conservation laws of gradient "
                             "flow for an architecture (D − dim Lie(W) at a random point)")
    cnt.add_argument("arch", help="IN-H1-…-HL:K1,K2 — input size, hidden widths, head output "
                     "sizes (e.g. '15-8-8:2,1'); may end with the words 'bias', 'head_bias', "
                     "'linear' — or a comparison config or sweep file (.yaml): every network "
                     "it trains")
    cnt.add_argument("--bias", action="store_true", help="trunk biases")
    cnt.add_argument("--linear", action="store_true", help="linear activations (deep linear net)")
    cnt.add_argument("--seed", type=int, default=0, help="seed of the random point θ")
    cnt.add_argument("--tol", type=float, default=1e-8, help="rank tolerance (unit vectors)")
    cnt.add_argument("--known", action="store_true", help="also list the closed-form laws")
    cnt.add_argument("--max-params", type=int, default=256,
                     help="refuse networks with more parameters (the cost grows ~D³)")
    cnt.set_defaults(func=_cmd_symmetry)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:  # overrides written after an option (`run c.yaml --no-progress seeds=[1]`)
        args.overrides = [*args.overrides, *extra]
    try:
        with stop_on_signals():
            return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`mtl-lab sweep … --dry-run | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # as a shell reports SIGPIPE
    except BaseException as err:
        stop = as_interrupted(err)
        if stop is None:
            raise
        print(f"\n{stop}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
