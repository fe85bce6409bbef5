"""Experiment trackers fed by the engine (``general.trackers``): TensorBoard by default; Weights & Biases
and MLflow on request, both in their offline / local-file modes (optional packages).

Each tracker gets, per training epoch, the history row (losses, accuracies, lr, images/s, density) and
the per-layer densities, and at the end the run's hyperparameters (its identity, flattened) with its
final metrics, so TensorBoard's HParams view, W&B and MLflow can compare runs side by side.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.run import Run
    from runspec import RunSpec


def flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, keeping numbers, strings and booleans (lists as text)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_scalars(value, name))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """Base class: the engine calls ``epoch`` after every training epoch and ``finish`` once at the end."""

    def epoch(self, epoch: int, row: dict[str, Any], densities: dict[str, float]) -> None:
        """Record one training epoch."""

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Record the run's hyperparameters and final metrics."""

    def close(self) -> None:
        """Flush and release files."""


class TensorBoard(Tracker):
    """Event files in ``<run folder>/tensorboard`` (``tensorboard --logdir results``)."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder / "tensorboard"
        # a resumed run drops what an interrupted attempt logged after its checkpoint
        self.writer = SummaryWriter(str(self.folder), purge_step=first_epoch + 1 if first_epoch else None)

    def epoch(self, epoch: int, row: dict[str, Any], densities: dict[str, float]) -> None:
        for key, value in _numbers(row).items():
            if key != "epoch":
                group, _, name = key.partition("_") if key.startswith(("train_", "val_")) else ("run", "", key)
                self.writer.add_scalar(f"{group}/{name}", value, epoch)
        for name, value in densities.items():
            self.writer.add_scalar(f"layer_density/{name}", value, epoch)
        self.writer.flush()

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.writer.add_hparams(hparams, {f"final/{k}": v for k, v in _numbers(metrics).items()}, run_name="hparams")

    def close(self) -> None:
        self.writer.close()


class Wandb(Tracker):
    """A Weights & Biases run in offline mode under ``<run folder>/wandb`` (``wandb sync`` uploads it)."""

    def __init__(self, folder: Path, name: str, run_id: str, config: dict[str, Any]) -> None:
        self.wandb = importlib.import_module("wandb")
        self.run = self.wandb.init(mode="offline", dir=str(folder), name=name, id=run_id, resume="allow",
                                   config=config)

    def epoch(self, epoch: int, row: dict[str, Any], densities: dict[str, float]) -> None:
        self.run.log({**_numbers(row), **{f"layer_density/{n}": d for n, d in densities.items()}}, step=epoch)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.run.summary.update(_numbers(metrics))

    def close(self) -> None:
        self.run.finish()


class MLflow(Tracker):
    """An MLflow run in the local file store ``<results root>/mlruns`` (``mlflow ui`` shows it)."""

    def __init__(self, store: Path, name: str, params: dict[str, Any]) -> None:
        self.mlflow = importlib.import_module("mlflow")
        self.mlflow.set_tracking_uri(store.resolve().as_uri())
        self.mlflow.start_run(run_name=name)
        self.mlflow.log_params(params)

    def epoch(self, epoch: int, row: dict[str, Any], densities: dict[str, float]) -> None:
        self.mlflow.log_metrics(_numbers(row), step=epoch)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_numbers(metrics))

    def close(self) -> None:
        self.mlflow.end_run()


def open_trackers(names: list[str], folder: Path, *, store: Path, first_epoch: int, name: str, run_id: str,
                  config: dict[str, Any], hparams: dict[str, Any]) -> list[Tracker]:
    """The trackers named in ``general.trackers`` for the run in ``folder``, resumed after ``first_epoch``
    (MLflow's file store is ``store``: the results root's ``mlruns``)."""
    out: list[Tracker] = []
    for tracker in names:
        if tracker == "tensorboard":
            out.append(TensorBoard(folder, first_epoch))
        elif tracker == "wandb":
            out.append(Wandb(folder, name, run_id, config))
        elif tracker == "mlflow":
            out.append(MLflow(store, name, hparams))
    return out


def hparams(spec: RunSpec) -> dict[str, Any]:
    """A run's settings for trackers: the main choices and every non-default value (flattened)."""
    cfg, comp = spec.config, spec.config.training.compressor
    main = {"experiment": cfg.general.experiment, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "criterion": comp.name, "sparsity": comp.sparsity, "mask": comp.mask, "seed": cfg.general.seed}
    return {**flat_scalars(spec.identity()), **main}


def start_trackers(run: Run) -> None:
    """Open the run's ``general.trackers`` (after a resume: dropping what was logged past the checkpoint) on
    rank 0, as ``run.trackers``."""
    if not run.rank.main:
        return
    spec, general = run.spec, run.spec.config.general
    root = run.folder.cache_dir.parent if run.folder.cache_dir is not None else run.folder.path
    run.trackers = open_trackers(general.trackers, run.folder.path, store=root / "mlruns",
                                 first_epoch=len(run.state.history), name=general.id or spec.hash(),
                                 run_id=spec.hash(), config=spec.to_dict(), hparams=hparams(spec))


def close_trackers(run: Run) -> None:
    for tracker in run.trackers:
        tracker.close()
    run.trackers = []
