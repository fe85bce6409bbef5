"""Command line of the PaI framework.

    python main.py run PATH [PATH ...] [--recursive] [--results DIR] [--force] [--set PATH=VALUE] [--max-batches N]
                       [--launcher local|slurm ...]
    python main.py status RESULTS [--sweep DIR]   # completed / running / failed / missing, ETA
    python main.py validate PATH [PATH ...] [--recursive] [--data] [--allow-module MODULE]
    python main.py list                          # registered datasets, models, criteria, experiments
    python main.py sweep BASE.json --set PATH=V1,V2 [...] --out DIR [--with-dense] [--overwrite]
    python main.py report RESULTS_DIR [--out reports/NAME] [--metric M] [--sweep DIR] [--sparsity S] [--reference F]
    python main.py autos-train DATASET.pt [...] --out PREDICTOR.pt    # fit the AutoSparse predictor
    python main.py export RUN --format torch-prune|sparse|... --out DIR  # a completed run's model, exported
    python main.py --experiment pbt --params_path DIR_OR_FILE     # the official repository's form
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Every command imports what it needs when it runs, so that `main.py --help` starts fast (no torch).


def cmd_validate(args: argparse.Namespace) -> int:
    from launch.runner import collect_configs
    from runspec import RunSpec
    from utils.schema import ConfigError

    files = collect_configs(args.paths, args.recursive)
    nested = [p for p in args.paths if not args.recursive and Path(p).is_dir() and not collect_configs([p])]
    if nested:  # a folder of grids (exp_configs/paper): its subfolders are what there is to check
        print(f"no *.json directly in {', '.join(nested)}: validating its subfolders (as --recursive)")
        files += collect_configs(nested, True)
    if not files:
        print("no *.json config files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    bad, seen = 0, {}
    for f in files:
        try:
            spec = RunSpec.load(f, build=True, overrides=overrides_of(args))
            problems = spec.data_problems(seen) if args.data else []
        except ConfigError as exc:
            problems = exc.problems
        except Exception as exc:  # noqa: BLE001 - one unreadable file never stops the others
            problems = [f"{f}: cannot be checked: {type(exc).__name__}: {exc}"]
        print(f"{'INVALID ' if problems else 'OK      '} {f}")
        for p in problems:
            print(f"  - {p}")
        bad += bool(problems)
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", 0)) > 0:  # the other ranks of a torchrun: rank 0 prints for the run
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    from launch.runner import collect_configs, run_batch, summary_table
    from runspec.config import parse_config, read_config_file
    from utils.schema import ConfigError

    files = collect_configs(args.paths, args.recursive, log=print)
    if not files:
        print("no *.json config files found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    if args.experiment:  # official form: --experiment must agree with each config's general.experiment
        for f in files:
            try:
                cfg, _ = parse_config(read_config_file(f))
            except ConfigError:
                continue  # reported by the run itself
            exp = cfg.general.experiment if cfg is not None else args.experiment
            if exp.lower() != args.experiment.lower():
                print(f"{f}: general.experiment is '{exp}' but --experiment {args.experiment} was given",
                      file=sys.stderr)
                return 2
    overrides = overrides_of(args)
    if getattr(args, "official_form", False):
        print("official command line: general.compat is 'official' in every config that does not set it")
    from runspec.paths import IfUnset

    shown = [(p, v) for p, v in overrides if not isinstance(v, IfUnset)]
    if shown:
        print("overrides (part of each run's identity): " + ", ".join(f"{p}={json.dumps(v)}" for p, v in shown))
    if args.launcher == "slurm":
        return _submit_slurm(files, args, overrides)
    if args.launcher == "local":
        from launch.local import launch_local, visible_gpus
        from launch.runner import skipped_outcome
        from launch.submit import plan

        try:
            gpus = visible_gpus(args.gpus)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        todo = plan(files, args.results, args.force, args.restart, overrides=overrides)
        if todo.problems:
            return _plan_problems(todo.problems)
        outcomes = launch_local(todo.todo, args.results, workers=args.workers, gpus=gpus, overrides=overrides,
                                earlier=[skipped_outcome(p, args.results, overrides) for p in todo.completed])
    else:
        outcomes = run_batch(files, results=args.results, force=args.force, restart=args.restart,
                             recursive=args.recursive, overrides=overrides)
    print()
    print(summary_table(outcomes))
    return batch_exit_code(outcomes, len(files))


EXIT_CODES = {0: "every run completed (or was already completed)", 1: "a run failed, or was busy in another process",
              2: "bad command line or configs: nothing ran", 130: "interrupted (Ctrl-C or SIGTERM): rerun to resume"}


def batch_exit_code(outcomes: list, configs: int) -> int:
    """Print the counts of a batch and return its exit code (:data:`EXIT_CODES`)."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("completed", "skipped", "failed", "interrupted", "busy")}
    busy = f", {count['busy']} busy in another process (not run here: rerun once it is free)" if count["busy"] else ""
    print(f"\n{count['completed'] + count['skipped']} completed ({count['skipped']} skipped), "
          f"{count['failed']} failed, {count['interrupted']} interrupted, "
          f"{max(configs - len(outcomes), 0)} not started{busy}")
    if count["interrupted"]:
        return 130
    return 1 if count["failed"] or count["busy"] else 0


def _plan_problems(problems: list[str]) -> int:
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    print(f"{len(problems)} problem(s) in the configs: nothing was submitted", file=sys.stderr)
    return 2


def _submit_slurm(files: list[Path], args: argparse.Namespace, overrides: list) -> int:
    from launch.submit import SlurmOptions, launch_slurm, plan

    todo = plan(files, args.results, args.force, args.restart, overrides=overrides)
    if todo.problems:
        return _plan_problems(todo.problems)
    print(f"{len(todo.completed)} completed runs are not submitted again")
    if not todo.todo:
        return 0
    extra = dict(kv.split("=", 1) for kv in args.slurm or [])
    launch_slurm(todo.todo, args.results, SlurmOptions(
        partition=args.partition, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run, mem=args.mem,
        time=args.time, max_parallel=args.max_parallel, runs_per_task=args.runs_per_task,
        ranks_per_run=args.ranks_per_run, extra=extra), overrides=overrides)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from launch.status import collect, render

    if not Path(args.results).is_dir():
        print(f"{args.results}: no such results folder", file=sys.stderr)
        return 2
    print(render(collect(args.results, args.sweep)))
    return 0


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without its dashes), got {text!r}")
    return text


def _count(minimum: int, maximum: int):
    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) < 12 else maximum + 1
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected a whole number from {minimum} to {maximum}, got {text!r}")
        return value
    return parse


def _gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        gpus = [-1]
    if not gpus or any(not 0 <= g < 4096 for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU indices such as 0,1,2,3, got {text!r}")
    return gpus


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a sparsity in [0, 1), e.g. 0.9, got {text!r}")
    return value


def _name_pair(text: str) -> tuple[str, str]:
    ours, sep, theirs = text.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
        raise argparse.ArgumentTypeError(f"expected OURS=PUBLISHED, e.g. imagefolder=cifar10, got {text!r}")
    return ours.strip(), theirs.strip()


def _slurm_time(text: str) -> str:
    from launch.submit import time_minutes

    try:
        time_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _memory(text: str) -> str:
    import re

    if not re.fullmatch(r"[1-9]\d{0,9}[KMGT]?", text):
        raise argparse.ArgumentTypeError(f"expected a Slurm memory size such as 32G, 16000M or 64000, got {text!r}")
    return text


def _override(text: str) -> tuple[str, object]:
    from runspec.paths import OverrideError, parse_override

    try:
        return parse_override(text)
    except OverrideError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_override_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", type=_override, metavar="PATH=VALUE", default=[],
                        help="set one config field in every config before it is checked (repeatable), e.g. "
                             "--set training.num_steps=2 --set compressor.sparsity=0.95; checked like the field "
                             "itself and part of the run's identity (its own run folder); VALUE is JSON, else a "
                             "string")
    parser.add_argument("--max-batches", type=_count(1, 10**9), default=None, metavar="N",
                        help="a smoke run: the same as --set training.max_batches=N (every pass capped at N "
                             "batches; capped evaluation draws its samples at random with the run seed)")


def overrides_of(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The ``--set`` pairs of a command line, then ``--max-batches`` as ``training.max_batches``; the
    official form (``--experiment ... --params_path ...``) first sets ``general.compat: official`` in every
    config that does not set it (the official repository's command runs the official behaviour)."""
    from runspec.paths import IfUnset

    out = [("general.compat", IfUnset("official"))] if getattr(args, "official_form", False) else []
    out += list(getattr(args, "set", None) or [])
    if getattr(args, "max_batches", None) is not None:
        out.append(("training.max_batches", args.max_batches))
    return out


def _add_launch_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                     help="inline: this process (default); local: worker processes (--workers); slurm: a job array")
    run.add_argument("--workers", type=_count(1, 1024), default=1, help="local: runs at a time (default 1)")
    run.add_argument("--gpus", type=_gpu_list, default=None, help="local: GPUs for the workers, one each in turn "
                                                                   "(default: every visible GPU)")
    slurm = run.add_argument_group("slurm (with --launcher slurm)")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--gpus-per-run", type=_count(0, 64), default=0, help="GPUs per task (default 0)")
    slurm.add_argument("--cpus-per-run", type=_count(1, 1024), default=1,
                       help="CPUs per task; also its thread count (default 1)")
    slurm.add_argument("--mem", type=_memory, default=None, help="memory per task, e.g. 32G")
    slurm.add_argument("--time", type=_slurm_time, default="4:00:00",
                       help="time limit per task: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (default 4:00:00)")
    slurm.add_argument("--max-parallel", type=_count(1, 100000), default=64,
                       help="tasks of the array running at once (default 64)")
    slurm.add_argument("--runs-per-task", type=_count(1, 100000), default=1,
                       help="configs run one after another per task")
    slurm.add_argument("--ranks-per-run", type=_count(1, 1024), default=None,
                       help="processes per run (DistributedDataParallel; default: one per GPU of --gpus-per-run)")
    slurm.add_argument("--slurm", action="append", type=_key_value, metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm account=lab --slurm qos=high (repeatable)")


def cmd_list(args: argparse.Namespace) -> int:
    import compressors
    import data
    import export
    import models
    from runspec import EXPERIMENTS, config_fields

    if args.fields:  # docs/configs.md's field table, generated from the typed dataclasses
        print("| field | type | default | meaning |\n|---|---|---|---|")
        for path, kind, default, meaning in config_fields():
            print(f"| `{path}` | {kind} | `{default}` | {meaning} |")
        return 0
    for title, names in (("experiments", EXPERIMENTS.names()), ("datasets", data.names()),
                         ("models", models.names()), ("criteria", compressors.names()),
                         ("export formats", export.names())):
        print(f"{title}: {', '.join(names)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps import sweep

    result = sweep(args.base, args.set or [], args.out, with_dense=args.with_dense, overwrite=args.overwrite,
                   dry_run=args.dry_run)
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from reporting import build_report

    out = args.out or str(Path("reports") / (Path(args.results).resolve().name or "report"))
    if blocker := next((p for p in (Path(out), *Path(out).parents) if p.exists() and not p.is_dir()), None):
        print(f"report: --out {out}: {blocker} is a file, not a folder; give a folder for the report",
              file=sys.stderr)
        return 2
    from reporting.reference import ReferenceError, load_reference

    try:
        reference = load_reference(args.reference) if args.reference else None
    except ReferenceError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    from reporting import UnknownMetric
    from utils.io import WriteError

    try:
        report = build_report(args.results, out, metric=args.metric, sweep_dir=args.sweep, sparsity=args.sparsity,
                              figures=not args.no_figures, reference=reference,
                              reference_datasets=dict(args.reference_dataset or []))
    except (WriteError, UnknownMetric) as exc:  # a full disk, a missing permission: the previous report stays
        print(f"report: {exc}", file=sys.stderr)
        return 2
    return 0 if report.n_runs else 1


def cmd_export(args: argparse.Namespace) -> int:
    from export import ExportError, export_run

    try:
        manifest = export_run(args.run, args.format, args.out, results=args.results)
    except ExportError as exc:
        print(exc, file=sys.stderr)
        return 2
    files = ", ".join(f"{name} ({size:,} bytes)" for name, size in manifest["files"].items())
    print(f"{manifest['format']}: wrote {files} into {args.out}; {manifest['size_ratio']:.3f} x the "
          f"{manifest['dense_bytes']:,} bytes of final_model.pt; manifest {Path(args.out) / 'export.json'}")
    return 0


def sweep_help() -> str:
    """The description of ``main.py sweep``; its path forms come from :func:`sweeps.grid.path_help`."""
    from sweeps.grid import path_help

    return ("Write one config per point of a grid.  " + path_help() + "  Values are JSON where possible (0.9, "
            "true, [80,120]), else strings; commas inside [] or {} do not split.  Every config is validated before "
            "anything is written.")


def cmd_autos_train(args: argparse.Namespace) -> int:
    from autosparse.cli import run as autos_train

    return autos_train(args)


def add_allow_module(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="let 'MODULE.sub:Class' names in configs import from MODULE (repeatable; also "
                             "$PAI_ALLOW_MODULES=a,b); other modules are never imported")


def allow_modules(args: argparse.Namespace) -> None:
    """``--allow-module`` goes into ``$PAI_ALLOW_MODULES``, which the registries read (worker processes too)."""
    from utils.registry import ALLOW_ENV

    given = [m for m in getattr(args, "allow_module", []) if m]
    if given:
        os.environ[ALLOW_ENV] = ",".join(filter(None, [os.environ.get(ALLOW_ENV, ""), *given]))


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description may be a function, called only when the help is shown (so that
    ``main.py --help`` does not import what a description is generated from)."""

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="main.py", description="Pruning at initialization experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run config files / folders of configs")
    run.add_argument("paths", nargs="+", help="config files or folders (every *.json, sorted)")
    run.add_argument("--recursive", action="store_true", help="include *.json in subfolders")
    run.add_argument("--results", default=None, help="results root (default: general.output_dir or ./results)")
    run.add_argument("--force", action="store_true", help="rerun completed runs too")
    add_allow_module(run)
    run.add_argument("--restart", action="store_true",
                     help="start failed and interrupted runs over instead of resuming them from their checkpoint")
    _add_override_arguments(run)
    _add_launch_arguments(run)
    run.set_defaults(func=cmd_run, experiment=None)
    sts = sub.add_parser("status", help="where the runs of a results folder (or a sweep) stand")
    sts.add_argument("results", help="results root")
    sts.add_argument("--sweep", default=None, help="sweep folder of configs: count its runs, list the missing ones")
    add_allow_module(sts)
    sts.set_defaults(func=cmd_status)
    val = sub.add_parser("validate", help="check configs without training")
    val.add_argument("paths", nargs="+")
    val.add_argument("--recursive", action="store_true")
    add_allow_module(val)
    val.add_argument("--data", action="store_true",
                     help="also check that each dataset is present (read from disk, never downloaded)")
    _add_override_arguments(val)
    val.set_defaults(func=cmd_validate)
    lst = sub.add_parser("list", help="list registered names")
    lst.add_argument("--fields", action="store_true", help="print every config field as a Markdown table")
    lst.set_defaults(func=cmd_list)
    swp = sub.add_parser("sweep", help="write one validated config per grid point", description=sweep_help,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    swp.add_argument("base", help="base config file (every field not swept is copied from it)")
    swp.add_argument("--set", action="append", metavar="PATH=V1,V2,...",
                     help="a swept field and its values (repeat for more axes; the grid is their product)")
    swp.add_argument("--out", required=True, help="folder for the generated configs")
    swp.add_argument("--with-dense", action="store_true",
                     help="add the dense baseline (class none) once per combination of the non-compressor axes")
    swp.add_argument("--overwrite", action="store_true", help="replace existing files whose content differs")
    swp.add_argument("--dry-run", action="store_true", help="validate and list, write nothing")
    add_allow_module(swp)
    swp.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("report", help="tables and figures from a results folder (never trains)")
    rep.add_argument("results", help="results root (as given to run --results)")
    rep.add_argument("--out", default=None, help="report folder (default: reports/<results folder name>)")
    rep.add_argument("--metric", default="best_val_test_acc",
                     help="results.json metric: best_val_test_acc (default), final_test_acc, *_f1, *_loss ...")
    rep.add_argument("--sweep", default=None, help="sweep folder of configs: list grid points with no completed run")
    rep.add_argument("--sparsity", type=_sparsity, default=None,
                     help="sparsity of the layer-density and mask-overlap figures (default: the one closest to 0.9)")
    rep.add_argument("--no-figures", action="store_true", help="tables and lists only")
    add_allow_module(rep)
    rep.add_argument("--reference", default=None, metavar="FILE",
                     help="CSV of published cells (e.g. docs/reference/fts_table1.csv): print them beside ours "
                          "with the difference and whether ours lies within the published ± std")
    rep.add_argument("--reference-dataset", action="append", type=_name_pair, metavar="OURS=PUBLISHED",
                     help="match our dataset OURS to the reference's PUBLISHED, e.g. imagefolder=cifar10 for runs on "
                          "the CIFAR-10 JPEG folders (repeatable)")
    rep.set_defaults(func=cmd_report)
    exp = sub.add_parser("export", help="write a completed run's model in another format (torch-prune, sparse, ...)")
    exp.add_argument("run", help="run folder (or a config file: its run folder under --results)")
    exp.add_argument("--format", required=True,
                     help="export format: torch-prune, sparse, ... (main.py list shows every one)")
    exp.add_argument("--out", required=True, help="folder for the exported files and export.json")
    exp.add_argument("--results", default=None,
                     help="with a config file as RUN: the results root it was run into (default: "
                          "general.output_dir or ./results)")
    add_allow_module(exp)
    exp.set_defaults(func=cmd_export)
    from autosparse.cli import add_arguments as autos_arguments

    ats = sub.add_parser("autos-train", help="fit the AutoSparse predictor on autos_dataset.pt files of irp runs")
    autos_arguments(ats)
    ats.set_defaults(func=cmd_autos_train)
    return parser


def official_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Official command line form.")
    parser.add_argument("--experiment", required=True, help="experiment (e.g. pbt)")
    parser.add_argument("--params_path", required=True, help="config file or folder of configs")
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("--results", default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--restart", action="store_true")
    add_allow_module(parser)
    _add_override_arguments(parser)
    _add_launch_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        args = official_parser().parse_args(argv)
        args.paths, args.official_form = [args.params_path], True
        allow_modules(args)
        try:
            return cmd_run(args)
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    allow_modules(args)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
