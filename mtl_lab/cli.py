"""The ``mtl-lab`` command line: thin shells over documented Python functions."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from mtl_lab.checkpoints import CheckpointError
from mtl_lab.config import ConfigError, dump_config, load_config


def _cmd_run(args: argparse.Namespace) -> int:
    from mtl_lab.comparison import comparison_table, run_comparison

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    out = args.output or cfg.resolved_output_dir()
    results = run_comparison(cfg, out, progress=False if args.no_progress else None)
    with pd.option_context("display.float_format", "{:.3e}".format, "display.width", 120):
        print(f"\nTest loss on the main task (mean over {len(cfg.seeds)} seed(s)):")
        print(comparison_table(results).to_string())
    print(f"\nResults: {out}/results.parquet ({len(results)} runs), figure {out}/comparison.png")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mtl_lab.analysis.report import analyze

    analyze(args.run_dir, progress=not args.no_progress)
    return 0


def _cmd_families(args: argparse.Namespace) -> int:
    import tasks

    for name in tasks.list_families():
        fields = tasks.get_family(name).params_model.model_fields
        print(f"{name}: {', '.join(fields)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a comparison (regimes × seeds × n_main on one task)")
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
    fam = sub.add_parser("families", help="list the registered task families")
    fam.set_defaults(func=_cmd_families)
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
        return args.func(args)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
