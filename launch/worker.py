"""One run in a worker process of ``--launcher local`` (:mod:`launch.local`).

    python -m launch.worker OUTCOME.json CONFIG.json [--results DIR] [--overrides JSON]

Runs the config with :func:`launch.runner.run_config` (so locks, skipping, resuming and failure records
are those of a plain ``run``) and writes its :class:`~launch.runner.RunOutcome` to ``OUTCOME.json``.
SIGINT or SIGTERM interrupts the run once: the run folder is marked ``interrupted`` (rerun to resume from
its last checkpoint), the outcome says so and the exit code is 130; further signals are ignored, so that
a second Ctrl-C never cuts the interruption's own writes short.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("outcome", type=Path, help="where to write the run's outcome (JSON)")
    parser.add_argument("config", type=Path, help="the config file to run")
    parser.add_argument("--results", default=None, help="results root (default: general.output_dir)")
    parser.add_argument("--overrides", default="[]", help="JSON list of [dotted path, value] pairs (run --set)")
    args = parser.parse_args(argv)

    from launch.runner import Interrupted, RunOutcome, run_config
    from runspec.paths import override_from_json
    from utils.io import write_json

    received: list[int] = []

    def interrupt_once(signum, frame):  # noqa: ANN001
        if received:
            return
        received.append(signum)
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt_once)
    code = 0
    try:
        overrides = [(path, override_from_json(value)) for path, value in json.loads(args.overrides)]
        outcome = run_config(args.config, results=args.results, overrides=overrides)
    except KeyboardInterrupt:
        name = signal.Signals(received[0]).name if received else "SIGINT"
        outcome = RunOutcome(str(args.config), "interrupted", reason=f"stopped by {name}; rerun to resume")
        code = EXIT_INTERRUPTED
    write_json(args.outcome, asdict(outcome))
    return code


if __name__ == "__main__":
    sys.exit(main())
