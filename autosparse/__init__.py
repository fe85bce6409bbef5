"""AutoSparse: a learned pruning-at-initialisation criterion.

Implements the data side of "Learning effective pruning at initialization from iterative pruning"
(AutoSparse, arXiv 2408.14757).  The paper's definitions, as used here:

* **surviving score** of a weight: the number of iterative-rewind-pruning (IRP) iterations it
  survives, an integer in ``0..N`` (N = number of IRP iterations; a weight removed at the first pruning
  step scores 0, a weight in the final mask scores N).  Written by ``trainers/irp.py``.
* **features** of a weight at initialisation: its initial value ``theta0`` and the mean gradient
  ``g0 = (1/B) sum_b grad ell_b(theta0)`` over the B mask batches (model in eval mode).
* **predictor**: an MLP ``f(theta0, g0) -> score / N`` fitted with the mean squared error; its output,
  computed on a new network at initialisation, is the pruning score (higher = keep).

Modules: :mod:`autosparse.dataset` (the ``autos_dataset.pt`` format), :mod:`autosparse.features`,
:mod:`autosparse.predictor` (the MLP and its file format), :mod:`autosparse.train` (the fit and its
evaluation on held-out tensors or datasets), :mod:`autosparse.cli` (``python main.py autos-train``).
"""
