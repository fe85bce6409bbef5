"""AutoSparse (arXiv 2408.14757): a learned pruning-at-initialisation criterion.

The score of a weight is the output of a small MLP trained (``python main.py autos-train``) to predict
the *surviving score* of iterative rewind pruning -- the number of IRP iterations the weight survives,
scaled to [0, 1] -- from its features at initialisation::

    s = f_MLP(theta0, g0),   g0 = (1/B) sum_b grad ell_b(theta0)   (eval mode, mask data)

(``theta0``, ``g0`` standardised per tensor unless the predictor was trained on raw features).  Option
``gradient: "sum"`` takes ``g0 = sum_b grad ell_b(theta0)`` instead, as AutoSparse's code does (its
``init_p_grad`` sums the batch gradients); with raw features the scale matters, so use the reduction the
predictor's training set was built with (``training.irp.grad_feature``: ``mask_mean`` -> mean,
``train_sum`` -> sum; for the whole training set as mask data: ``compressor.per_class_samples: null``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from autosparse.predictor import load_predictor, predict_tensor
from compressors import register
from compressors.base import Compressor, Scores
from compressors.estimators import mean_gradient, summed_gradient
from utils.schema import option


@dataclass
class AutoSparseOptions:
    predictor: str = option(help="path of the predictor file written by `python main.py autos-train` "
                                 "(relative to the working directory)")
    batch_size: int = option(65536, "weights per prediction batch (bounds the memory of the prediction)", min=1)
    chunk_size: int = option(128, "mask samples per batched forward/backward pass of the mean gradient (memory "
                                  "vs speed; the result does not depend on it)", min=1)
    gradient: Literal["mean", "sum"] = option(
        "mean", "the feature g0 over the mask batches: 'mean' (1/B) sum_b grad ell_b, or 'sum' sum_b grad ell_b "
                "(AutoSparse's code)")


@register("autosparse")
class AutoSparse(Compressor):
    """AutoSparse: ``s = f_MLP(theta0, g0)`` with ``g0`` the mean mask-batch gradient (see the module
    docstring).  The predictor is loaded when the criterion is built, so a missing or incompatible file
    fails before any training, naming the path and what was expected."""

    Options = AutoSparseOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net, self.settings = load_predictor(self.options.predictor)

    @cached_property
    def predictor_sha256(self) -> str:
        return hashlib.sha256(Path(self.options.predictor).read_bytes()).hexdigest()

    def options_dict(self) -> dict[str, Any]:
        """The options plus the predictor file's SHA-256, so cached scores follow the file's content."""
        return {**super().options_dict(), "predictor_sha256": self.predictor_sha256}

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        reduce = summed_gradient if self.options.gradient == "sum" else mean_gradient
        grads = reduce(model, names, mask_loader, loss_fn, chunk_size=self.options.chunk_size)
        net = self.net.to(next(iter(params.values())).device)
        with torch.no_grad():
            return {n: predict_tensor(net, self.settings, params[n].detach(), grads[n], self.options.batch_size)
                    for n in names}
