"""``--format sparse``: the pruned weights as CSR sparse tensors, everything else dense.

``sparse_state_dict.pt`` holds ``{"format": "pai-sparse-state-dict", "version": 1, "tensors": {name:
tensor}, "shapes": {name: original shape}}``.  A parameter of ``mask.pt`` with at least one removed entry
is stored as a ``torch.sparse_csr`` tensor of its 2-D view (a convolution weight ``(C_out, C_in, k_h, k_w)``
as ``(C_out, C_in * k_h * k_w)``; a bias as ``(1, n)``) holding its kept entries and any other non-zero
one, with int32 indices where they fit; its original shape is in ``shapes``.  Every other entry of
``final_model.pt`` stays dense.  :func:`load_sparse` gives back the dense state dict, equal to
``final_model.pt`` entry for entry.  The file's size against ``final_model.pt``'s is in ``export.json``
(CSR costs 4 bytes of index per stored float32 value, plus one per row: it is smaller than the dense
tensor below a density of about 1/2).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from export import register
from export.base import Exporter, ExportError, LoadedRun
from utils.io import load_torch, save_torch

FILE = "sparse_state_dict.pt"
FORMAT, VERSION = "pai-sparse-state-dict", 1
INT32_MAX = 2**31 - 1


def to_csr(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The 2-D view of ``tensor`` as CSR, storing the entries where ``keep`` is true or ``tensor`` is not 0
    (so :func:`from_csr` gives ``tensor`` back exactly)."""
    flat = tensor.detach().cpu().reshape(tensor.shape[0] if tensor.dim() > 1 else 1, -1)
    stored = keep.cpu().reshape(flat.shape) | (flat != 0)
    rows, cols = stored.nonzero(as_tuple=True)
    dtype = torch.int32 if max(flat.shape[0] + 1, flat.shape[1], rows.numel()) <= INT32_MAX else torch.int64
    crow = torch.zeros(flat.shape[0] + 1, dtype=dtype)
    crow[1:] = torch.cumsum(stored.sum(dim=1), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols.to(dtype), flat[rows, cols].clone(), size=tuple(flat.shape),
                                       check_invariants=True)


def from_csr(csr: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The dense tensor of ``shape`` that :func:`to_csr` stored."""
    return csr.to_dense().reshape(shape)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a ``sparse_state_dict.pt`` (``model.load_state_dict(load_sparse(path))``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(Validating sparse tensor|Sparse CSR tensor support)")
        content = load_torch(path)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ExportError(f"{path}: not a sparse state dict (expected format '{FORMAT}')")
    if content.get("version") != VERSION:
        raise ExportError(f"{path}: version {content.get('version')!r}; this version reads {VERSION}")
    shapes = content["shapes"]
    return {name: from_csr(t, shapes[name]) if name in shapes else t for name, t in content["tensors"].items()}


@register("sparse")
class Sparse(Exporter):
    """``sparse_state_dict.pt``: pruned weights as CSR tensors (see the module docstring)."""

    def export(self, loaded: LoadedRun, out: Path) -> dict[str, Any]:
        tensors: dict[str, torch.Tensor] = {}
        shapes: dict[str, list[int]] = {}
        pruned = set(loaded.pruned())
        for name, value in loaded.state_dict.items():
            if name in pruned:
                tensors[name] = to_csr(value, loaded.masks[name])
                shapes[name] = list(value.shape)
            else:
                tensors[name] = value.detach().cpu()
        path = out / FILE
        save_torch(path, {"format": FORMAT, "version": VERSION, "tensors": tensors, "shapes": shapes})
        stored = {n: int(tensors[n].values().numel()) for n in shapes}
        return {"files": [path], "sparse_tensors": {n: {"shape": shapes[n], "stored": stored[n],
                                                        "index_dtype": str(tensors[n].crow_indices().dtype)}
                                                    for n in shapes},
                "loader": "export.sparse.load_sparse"}
