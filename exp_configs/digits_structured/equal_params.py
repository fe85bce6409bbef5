"""Unstructured twins of structured runs: for every completed structured run under RESULTS, a config that
prunes single weights with the same criterion, seed and recipe, at the sparsity that keeps exactly as many
prunable weights as the structured run kept (its ``achieved_sparsity``), so the two are compared at equal
parameter counts.

    python exp_configs/digits_structured/equal_params.py results/digits_structured [--out DIR]
    python main.py run DIR --results results/digits_structured      # DIR: default exp_configs/digits_structured/twins
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runspec.folder import Files, find_run_dirs  # noqa: E402


def twins(results: Path, out: Path) -> list[Path]:
    written = []
    for run in find_run_dirs(results):
        config, outcome = run / Files.CONFIG, run / Files.RESULTS
        if not (config.is_file() and outcome.is_file()):
            continue
        cfg, res = json.loads(config.read_text()), json.loads(outcome.read_text())
        comp = cfg["training"]["compressor"]
        if comp.get("structure", "none") == "none":
            continue
        prunable, kept = res["prunable_parameters"], res["kept_parameters"]
        comp["structure"] = "none"
        comp["sparsity"] = 1.0 - kept / prunable  # select() keeps round((1 - s) * n) = kept
        cfg["general"]["id"] = f"{cfg['general'].get('id') or run.name}_unstructured_twin"
        cfg["general"]["description"] = f"unstructured twin of {run} ({kept:,} of {prunable:,} prunable weights kept)"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{comp['class']}_twin_of_{run.parent.name}_{run.name}.json"
        path.write_text(json.dumps(cfg, indent=1) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="results root holding the structured runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "twins", help="folder for the configs")
    args = parser.parse_args(argv)
    paths = twins(args.results, args.out)
    print(f"{len(paths)} unstructured twins written to {args.out}")


if __name__ == "__main__":
    main()
