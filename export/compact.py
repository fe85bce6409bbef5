"""``--format compact``: the trained network of a structured run with its removed structures cut out.

Writes ``architecture.json`` (the model class, its options, class count and input shape, the structure
kinds and, for each group of structures, which were kept) and ``compact_model.pt`` (the compact model's
state dict: plain tensors, smaller convolutions / Linear layers / BatchNorms, fewer attention heads).
:func:`load_compact` rebuilds the compact network from these two files alone (no run folder needed):
it builds the architecture with this repository's model registry, cuts the same structures out
(:func:`compressors.structures.compact_model`) and loads the weights.  The compact network computes what
the masked network of the run computes (tests check a relative error under 1e-5 in float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from compressors.structures import find_structures
from export import register
from export.base import Exporter, ExportError, LoadedRun
from utils.io import load_torch, read_json, save_torch, write_json

ARCHITECTURE = "architecture.json"
WEIGHTS = "compact_model.pt"
LAYOUT = "pai-compact"


@register("compact")
class Compact(Exporter):
    """``architecture.json`` + ``compact_model.pt`` (see the module docstring); structured runs only."""

    def export(self, loaded: LoadedRun, out: Path) -> dict[str, Any]:
        structure = loaded.spec.config.training.compressor.structure
        if structure == "none":
            raise ExportError(f"{loaded.run_dir}: the run pruned single weights (training.compressor.structure is "
                              "'none'), so there is nothing to cut out; use --format torch-prune or sparse")
        inputs = loaded.model_inputs
        structures = find_structures(loaded.model, structure, inputs["input_shape"])
        keep = structures.keep_from_masks(loaded.masks)
        compact = structures.compact(loaded.model, keep)
        dense_params = sum(p.numel() for p in loaded.model.parameters())
        compact_params = sum(p.numel() for p in compact.parameters())
        architecture = {"layout": LAYOUT, "version": 1, "model": inputs, "structure": structure,
                        "structures": structures.description(keep), "parameters": compact_params,
                        "shapes": {k: list(v.shape) for k, v in compact.state_dict().items()}}
        write_json(out / ARCHITECTURE, architecture)
        save_torch(out / WEIGHTS, {k: v.detach().cpu() for k, v in compact.state_dict().items()})
        return {"files": [out / ARCHITECTURE, out / WEIGHTS], "parameters_dense": dense_params,
                "parameters_compact": compact_params, "structures_kept": structures.record(keep)["per_kind"]}


def load_compact(folder: str | Path) -> nn.Module:
    """The compact network exported into ``folder`` (``architecture.json`` + ``compact_model.pt``), in eval
    mode on the CPU.  A ValueError names the file that is missing or does not fit."""
    folder = Path(folder)
    arch_file, weights_file = folder / ARCHITECTURE, folder / WEIGHTS
    for f in (arch_file, weights_file):
        if not f.is_file():
            raise ExportError(f"{f}: missing; a compact export holds {ARCHITECTURE} and {WEIGHTS}")
    arch = read_json(arch_file)
    if not isinstance(arch, dict) or arch.get("layout") != LAYOUT:
        raise ExportError(f"{arch_file}: not a compact-model description (layout {LAYOUT!r} expected)")
    spec = arch["model"]
    with torch.random.fork_rng(devices=[]):  # the weights are loaded next; the draw does not matter
        base = models.build(spec["class"], num_classes=spec["num_classes"], input_shape=spec["input_shape"],
                            **spec.get("options", {}))
    structures = find_structures(base, arch["structure"], spec["input_shape"])
    try:
        keep = structures.keep_from_description(arch["structures"])
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{arch_file}: {exc}") from None
    model = structures.compact(base, keep)
    try:
        model.load_state_dict(load_torch(weights_file))
    except RuntimeError as exc:
        raise ExportError(f"{weights_file}: does not fit the architecture of {arch_file} "
                          f"({str(exc).splitlines()[0]})") from None
    return model.eval()
