"""What ``general.compat: "official"`` changes: masks of the official second-order PaI code's variants
against this project's (paper) ones, measured on the same network and the same mask data.

    python benchmarks/official_diff.py            # digits (digits_cnn) + ResNet18 on random CIFAR-sized inputs
                                                  # (~4 minutes on a 2-core CPU; --resnet-rounds 100 as the paper)
    python benchmarks/official_diff.py --quick    # digits only (seconds)

For each setting it resolves two configs through ``spec.RunSpec`` (``general.compat`` paper / official;
nothing else differs), builds the network of the run seed, scores it with each side's criterion, prunable
tensors and kept-count rule, and prints

- the mask IoU |A ∩ B| / |A ∪ B| of GraSP and SynFlow (official vs paper) at sparsity 0.9 and 0.98, over the
  tensors both sides prune (chance level for two random masks of density d: d / (2 - d));
- SynFlow's kept weights per layer on each side, and how many layers the official variant leaves without
  a single weight that carries signal (kept entries whose SynFlow score is zero: disconnected);
- the prunable tensors and entries of each rule, and the kept counts of the two kept-count rules;
- two "unseeded" mask-data draws: how many of their samples they share.

Both sides see the same mask data (the paper's: seeded, evaluation transform, fixed order), so the numbers
isolate the criteria, the prunable rule and the selection.  Every number is measured in the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compressors  # noqa: E402
import data  # noqa: E402
from engine.assemble import build_criterion, build_loaders, initial_model, prunable_names  # noqa: E402
from runspec import RunSpec  # noqa: E402


def spec_for(mode: str, dataset: str, model: str, criterion: str, sparsity: float, rounds: int,
             **compressor) -> RunSpec:
    options = {"rounds": rounds} if criterion == "synflow" else {}
    return RunSpec.from_dict({"general": {"compat": mode, "seed": 0}, "dataset": {"class": dataset},
                              "model": {"class": model},
                              "training": {"compressor": {"class": criterion, "sparsity": sparsity,
                                                          "options": options, **compressor}}})


def masks_of(spec: RunSpec, model: nn.Module, batches, sparsity: float):
    comp = spec.config.training.compressor
    names = prunable_names(comp, model)
    scores = build_criterion(comp).score(model, batches, nn.CrossEntropyLoss(), params=names, sparsity=sparsity)
    return scores, compressors.select(scores, sparsity, comp.mask, kept=comp.kept_count)


def iou(a: dict, b: dict) -> float:
    common = [n for n in a if n in b]
    inter = sum(int((a[n].bool() & b[n].bool()).sum()) for n in common)
    union = sum(int((a[n].bool() | b[n].bool()).sum()) for n in common)
    return inter / union if union else 1.0


def compare(label: str, dataset: str, model_name: str, build, batches, sparsities, rounds: int,
            **official) -> None:
    """``official``: compressor fields set on the official side (e.g. its prunable rule)."""
    print(f"\n## {label}")
    print("| criterion | sparsity | mask IoU official vs paper | chance | kept official / paper | seconds |")
    print("|---|---|---|---|---|---|")
    layer_rows = {}
    for criterion in ("grasp", "synflow"):
        scored: dict = {}
        for s in sparsities:
            tic = time.perf_counter()
            out = {}
            for mode in ("paper", "official"):
                spec = spec_for(mode, dataset, model_name, criterion, s, rounds,
                                **(official if mode == "official" else {}))
                if criterion == "synflow" or mode not in scored:  # GraSP's scores do not depend on s
                    scored[mode] = spec, masks_of(spec, build(spec), batches, s)[0]
                comp = spec.config.training.compressor
                out[mode] = scored[mode][1], compressors.select(scored[mode][1], s, comp.mask, kept=comp.kept_count)
            pm, (os_, om) = out["paper"][1], out["official"]
            kept = [sum(int(m.sum()) for m in x.values()) for x in (om, pm)]
            d = 1 - s
            print(f"| {criterion} | {s} | {iou(om, pm):.3f} | {d / (2 - d):.3f} | {kept[0]:,} / {kept[1]:,} | "
                  f"{time.perf_counter() - tic:.1f} |")
            if criterion == "synflow" and s == sparsities[0]:
                layer_rows = {n: (int(om[n].sum()), int(((om[n] > 0) & (os_[n] > 0)).sum()),
                                  int(pm[n].sum()) if n in pm else None, om[n].numel()) for n in om}
    print(f"\nSynFlow kept weights per tensor at sparsity {sparsities[0]} (official: kept / of them with a non-zero "
          "score; paper: kept):")
    print("| tensor | entries | official kept | official kept, score > 0 | paper kept |")
    print("|---|---|---|---|---|")
    for n, (k_off, live, k_pap, size) in layer_rows.items():
        print(f"| {n} | {size:,} | {k_off:,} | {live:,} | {'-' if k_pap is None else f'{k_pap:,}'} |")
    dead = [n for n, (_, live, _, _) in layer_rows.items() if live == 0]
    print(f"official SynFlow: {len(dead)} of {len(layer_rows)} tensors keep no weight with a non-zero score")


def prunable_and_counts(model: nn.Module, sparsity: float) -> None:
    params = dict(model.named_parameters())
    print(f"\n| prunable rule | tensors | entries | kept at s={sparsity:g}: round / floor |")
    print("|---|---|---|---|")
    for rule in ("module_type", "official_names"):
        names = compressors.prunable_names(model, rule=rule)
        n = sum(params[x].numel() for x in names)
        print(f"| {rule} | {len(names)} | {n:,} | {compressors.kept_count(n, sparsity):,} / "
              f"{compressors.kept_count(n, sparsity, 'floor'):,} |")
    extra = [x for x in compressors.prunable_names(model, rule="official_names")
             if x not in compressors.prunable_names(model)]
    print(f"official-only tensors: {extra} ({sum(params[x].numel() for x in extra)} entries)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument("--rounds", type=int, default=100, help="SynFlow rounds on digits (default 100, the paper's)")
    ap.add_argument("--resnet-rounds", type=int, default=20,
                    help="SynFlow rounds on ResNet18 (default 20, to stay within minutes on a CPU; the official "
                         "code runs 100: round one still prunes s^(1/n), 99.5%% at s = 0.9)")
    ap.add_argument("--samples", type=int, default=2, help="ResNet18 mask samples per class (random inputs)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # digits: the bundled dataset, the paper's mask data (10 per class, batch 1)
    spec = spec_for("paper", "digits", "digits_cnn", "grasp", 0.9, args.rounds)
    loaders = build_loaders(spec.config, torch.device("cpu"))
    digits = (loaders.num_classes, loaders.input_shape)
    batches = list(loaders.mask)
    # digits_cnn is no model of the official code and its parameter names are indices ("1.weight" is a BN
    # scale), so the official name rule would prune its BN scales and classifier: both sides prune by type
    compare("digits, digits_cnn, 100 mask samples (batch 1); both sides prune Conv weights (prunable: module_type)",
            "digits", "digits_cnn", lambda s: initial_model(s.config, *digits), batches, (0.9, 0.98), args.rounds,
            prunable="module_type")
    prunable_and_counts(initial_model(spec.config, *digits), 0.9)
    splits = data.get("digits")().load()
    unseeded = data.MaskDataSettings(per_class_samples=10, sampling="unseeded")
    draws = [set(data.build_loaders(splits, data.LoaderSettings(batch_size=32), unseeded, seed=0).mask_indices)
             for _ in range(2)]
    print(f"\ntwo unseeded mask-data draws (digits, 10 per class) share {len(draws[0] & draws[1])} of "
          f"{len(draws[0])} samples")
    if args.quick:
        return

    gen = torch.Generator().manual_seed(0)
    n = 10 * args.samples
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.arange(n) % 10
    batches = [(x[i:i + 1], y[i:i + 1]) for i in range(n)]
    shape = (10, (3, 32, 32))
    compare(f"ResNet18, {n} random CIFAR-sized mask samples (batch 1)", "cifar10", "resnet18",
            lambda s: initial_model(s.config, *shape), batches, (0.9, 0.98), args.resnet_rounds)
    prunable_and_counts(initial_model(spec_for("paper", "cifar10", "resnet18", "grasp", 0.9, 1).config, *shape), 0.9)


if __name__ == "__main__":
    main()
