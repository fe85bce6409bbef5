"""``--format torch-prune``: the state dict ``torch.nn.utils.prune.custom_from_mask`` leaves behind.

For every parameter of ``mask.pt`` (``<module>.weight``, and ``<module>.bias`` when biases were pruned)
the state dict holds ``<module>.weight_orig`` (the trained values) and ``<module>.weight_mask`` (the mask,
1.0 = kept, in the parameter's dtype) instead of ``<module>.weight``; every other entry is as in
``final_model.pt``.  The file is made by applying ``prune.custom_from_mask`` to the trained network and
taking its ``state_dict()``, so the layout is torch's own.  A plain model of the same architecture takes it
after ``prune.identity(module, name)`` on those modules (docs/export.md), and then computes what the
masked network computes: torch's pruning hook recomputes ``weight = weight_orig * weight_mask``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.nn.utils import prune

from export import register
from export.base import Exporter, LoadedRun
from utils.io import save_torch

FILE = "torch_prune.pt"


@register("torch-prune")
class TorchPrune(Exporter):
    """``torch_prune.pt``: ``{..., "<module>.weight_orig", "<module>.weight_mask", ...}`` (see the module)."""

    def export(self, loaded: LoadedRun, out: Path) -> dict[str, Any]:
        model = loaded.fresh_model()
        for name, mask in loaded.masks.items():
            module, _, attr = name.rpartition(".")
            prune.custom_from_mask(model.get_submodule(module), attr, mask)
        path = out / FILE
        save_torch(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        return {"files": [path], "masked_parameters": sorted(loaded.masks), "pruned_parameters": loaded.pruned()}
