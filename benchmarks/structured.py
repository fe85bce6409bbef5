"""Structured pruning's real speed: dense vs masked vs compact models, measured in the same run.

    python benchmarks/structured.py                 # vit_small and resnet18, sparsities 0.25 / 0.5 / 0.75
    python benchmarks/structured.py --quick         # smoke run (small batch, one repeat)
    python benchmarks/structured.py --device cuda   # on a GPU (default: cuda when available, else cpu)

For each model and structured sparsity (``resnet18``: channels; ``vit_small``: heads + MLP neurons), the
structures are chosen from magnitude scores (``compressors.structures``, sum aggregate, per-layer ranking,
so every layer loses the same fraction of its structures and the parameter count falls about as
(1 - s)^2 for channels),
the masked model is the dense model with those weights zeroed, and the compact model is the masked model
with the structures cut out (:func:`compressors.structures.compact_model`; its outputs are checked against
the masked model's).  Printed per row: parameters, inference latency at batch 1 (median of many calls)
and throughput at batch ``--batch`` (default 256), each as the time and as a ratio to the dense model of
the same round.  Calls of all models are interleaved round by round, so a busy machine's noise hits them
alike.  Inputs are random CIFAR-sized tensors (3 x 32 x 32), eval mode, no autograd, float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import models  # noqa: E402
from compressors.structures import find_structures  # noqa: E402

CASES = {"resnet18": "channel", "vit_small": "head+neuron"}
SHAPE = (3, 32, 32)


def build_variants(name: str, sparsities: list[float], device: torch.device) -> list[tuple[str, float, nn.Module]]:
    """(label, sparsity, model): the dense model, then the masked and compact model of each sparsity."""
    torch.manual_seed(0)
    dense = models.build(name, num_classes=10, input_shape=SHAPE).eval()
    structures = find_structures(dense, CASES[name], SHAPE)
    params = dict(dense.named_parameters())
    scores = {n: p.detach().abs() for n, p in params.items() if p.dim() > 1}
    aggregated = structures.structure_scores(scores, "sum")
    out = [("dense", 0.0, dense.to(device))]
    x = torch.randn(2, *SHAPE)
    for s in sparsities:
        keep, _ = structures.select(aggregated, s, "layer")
        masked = models.build(name, num_classes=10, input_shape=SHAPE).eval()
        masked.load_state_dict(dense.state_dict())
        masked_params = dict(masked.named_parameters())
        with torch.no_grad():
            for n, m in structures.masks(keep, masked_params).items():
                masked_params[n].mul_(m.to(masked_params[n].device))
        compact = structures.compact(masked.cpu(), keep).eval()
        with torch.no_grad():
            a, b = masked.cpu()(x), compact(x)
        err = float((a - b).norm() / a.norm())
        if err > 1e-4:
            raise RuntimeError(f"{name} at {s}: the compact model differs from the masked one (rel. error {err:.2e})")
        out += [("masked", s, masked.to(device)), ("compact", s, compact.to(device))]
    return out


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


@torch.no_grad()
def measure(variants: list[tuple[str, float, nn.Module]], batch: int, rounds: int, latency_calls: int,
            device: torch.device) -> list[dict]:
    one = torch.randn(1, *SHAPE, device=device)
    many = torch.randn(batch, *SHAPE, device=device)
    for _, _, model in variants:  # warm-up (allocator, kernels)
        model(one)
        model(many[: min(batch, 8)])
    lat = {i: [] for i in range(len(variants))}
    thr = {i: [] for i in range(len(variants))}
    for _ in range(rounds):
        for i, (_, _, model) in enumerate(variants):
            lat[i] += [timed(lambda m=model: m(one), device) for _ in range(latency_calls)]
            thr[i].append(timed(lambda m=model: m(many), device))
    rows = []
    base_lat, base_thr = statistics.median(lat[0]), statistics.median(thr[0])
    for i, (label, s, model) in enumerate(variants):
        lt, t = statistics.median(lat[i]), statistics.median(thr[i])
        rows.append({"model": label, "sparsity": s, "params": sum(p.numel() for p in model.parameters()),
                     "latency_ms": 1e3 * lt, "latency_ratio": lt / base_lat, "images_per_s": batch / t,
                     "throughput_ratio": base_thr / t})
    return rows


def table(name: str, rows: list[dict], batch: int, device: torch.device) -> str:
    lines = [f"\n{name} ({CASES[name]}) on {device}, batch-1 latency and batch-{batch} throughput",
             "| model | structured sparsity | parameters | latency (ms) | latency / dense | images/s | "
             "throughput / dense |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sparsity']:g} | {r['params']:,} | {r['latency_ms']:.2f} | "
                     f"{r['latency_ratio']:.2f} | {r['images_per_s']:,.0f} | {r['throughput_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, one round, few latency calls")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="throughput batch size (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, rounds, calls = (8, 1, 3) if args.quick else (args.batch, args.rounds, 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    out = []
    for name in args.models:
        rows = measure(build_variants(name, args.sparsities, device), batch, rounds, calls, device)
        print(table(name, rows, batch, device), flush=True)
        out += [{"arch": name, **r} for r in rows]
    return out


if __name__ == "__main__":
    main()
