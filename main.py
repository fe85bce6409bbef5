"""Command line of the PaI framework.

    python main.py run PATH [PATH ...] [--recursive] [--results DIR] [--force]
    python main.py validate PATH [PATH ...] [--recursive]
    python main.py list                          # registered datasets, models, criteria, experiments
    python main.py --experiment pbt --params_path DIR_OR_FILE     # the official repository's form
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import load_config  # noqa: E402
from utils.resolve import resolve  # noqa: E402
from utils.typed import ConfigError  # noqa: E402


def cmd_validate(args: argparse.Namespace) -> int:
    from trainers.runner import collect_configs

    files = collect_configs(args.paths, args.recursive)
    if not files:
        print("no *.json config files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        try:
            resolve(load_config(f), str(f), build_model=True)
            print(f"OK       {f}")
        except ConfigError as exc:
            bad += 1
            print(f"INVALID  {f}")
            for p in exc.problems:
                print(f"  - {p}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    from trainers.runner import collect_configs, run_batch, summary_table

    files = collect_configs(args.paths, args.recursive)
    if not files:
        print("no *.json config files found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    if args.experiment:  # official form: --experiment must agree with each config's general.experiment
        for f in files:
            try:
                exp = load_config(f).general.experiment
            except ConfigError:
                continue  # reported by the run itself
            if exp.lower() != args.experiment.lower():
                print(f"{f}: general.experiment is '{exp}' but --experiment {args.experiment} was given",
                      file=sys.stderr)
                return 2
    outcomes = run_batch(files, results=args.results, force=args.force, recursive=args.recursive)
    print()
    print(summary_table(outcomes))
    failed = sum(o.status == "failed" for o in outcomes)
    interrupted = sum(o.status == "interrupted" for o in outcomes)
    done = sum(o.status in ("completed", "skipped") for o in outcomes)
    print(f"\n{done} completed ({sum(o.status == 'skipped' for o in outcomes)} skipped), {failed} failed, "
          f"{interrupted} interrupted, {len(files) - len(outcomes)} not started")
    if interrupted:
        return 130
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    import compressors
    import data
    import models
    import trainers

    for title, names in (("experiments", trainers.names()), ("datasets", data.names()),
                         ("models", models.names()), ("criteria", compressors.names())):
        print(f"{title}: {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Pruning at initialization experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run config files / folders of configs")
    run.add_argument("paths", nargs="+", help="config files or folders (every *.json, sorted)")
    run.add_argument("--recursive", action="store_true", help="include *.json in subfolders")
    run.add_argument("--results", default=None, help="results root (default: general.output_dir or ./results)")
    run.add_argument("--force", action="store_true", help="rerun completed runs too")
    run.set_defaults(func=cmd_run, experiment=None)
    val = sub.add_parser("validate", help="check configs without training")
    val.add_argument("paths", nargs="+")
    val.add_argument("--recursive", action="store_true")
    val.set_defaults(func=cmd_validate)
    lst = sub.add_parser("list", help="list registered names")
    lst.set_defaults(func=cmd_list)
    return parser


def official_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Official command line form.")
    parser.add_argument("--experiment", required=True, help="experiment (e.g. pbt)")
    parser.add_argument("--params_path", required=True, help="config file or folder of configs")
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("--results", default=None)
    parser.add_argument("--force", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        args = official_parser().parse_args(argv)
        args.paths = [args.params_path]
        try:
            return cmd_run(args)
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
