"""The end of a training epoch as an ordered list of hooks (open_lth's training callbacks: the loop stays
simple, everything done after an epoch is one small function in a list).

A hook is a callable ``hook(run, end)``: ``run`` is the :class:`engine.run.Run`, ``end`` the
:class:`EpochEnd` of the data epoch just completed, whose ``row`` (the epoch's history row) the hooks fill
in and read in turn.  The Train stage calls :func:`end_epoch` after the last batch of every epoch, which runs
``run.hooks`` in order.  The composition root (:func:`engine.assemble.assemble`) builds the list:
:func:`default_hooks`, which the experiment's :meth:`engine.experiment.Experiment.hooks` may return
extended (a hook placed before :func:`checkpoint` has its effects in that epoch's checkpoint, so a resumed
run has them too; state a hook keeps should live in ``run.state.extra``, which is checkpointed)::

    from engine import hooks

    class WithNorm(PruneBeforeTraining):
        def hooks(self, run, default):
            def weight_norm(run, end):  # before append_history: the value lands in history.json
                end.row["weight_norm"] = float(sum(p.detach().norm() for p in run.model.parameters()))
            at = default.index(hooks.append_history)
            return [*default[:at], weight_norm, *default[at:]]

The default order (:data:`DEFAULT`): :func:`step_schedule`, :func:`sync_buffers`, :func:`count_epoch` (the
row's training numbers), :func:`validate`, :func:`keep_best`, :func:`append_history`, :func:`heartbeat`,
:func:`feed_trackers`, :func:`checkpoint`, :func:`write_history`, :func:`log_epoch`, then the caller's
``on_epoch_end(epoch, row)`` (:class:`Callback`) when there is one.

Hooks run on every rank (the collectives in :func:`sync_buffers` and :func:`count_epoch` need all of them);
what they write goes through ``run.folder``, which only rank 0 really writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import compressors
from engine.checkpoint import save_run
from engine.run import Run, state_to_cpu
from runspec.folder import Files
from utils import distributed

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class EpochEnd:
    """What the hooks of one epoch's end share: the data ``epoch`` just completed (1-based, as in the
    history), its history ``row`` (filled by the hooks), and what the Train stage asked for: ``validate``
    this epoch, ``track_best`` (keep the best-validation model), ``label`` (the row's ``stage``; None: the
    stage's index)."""

    epoch: int
    validate: bool
    track_best: bool
    label: Any = None
    row: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[Run, EpochEnd], None]


def better(metric: str, new: float, best: float | None) -> bool:
    """Is ``new`` a better value of validation ``metric`` than ``best``?"""
    return best is None or (new < best if metric == "loss" else new > best)


def step_schedule(run: Run, end: EpochEnd) -> None:
    """The per-epoch learning-rate schedule takes its step."""
    run.scheduler.step()


def sync_buffers(run: Run, end: EpochEnd) -> None:
    """Every rank gets rank 0's buffers (BN statistics)."""
    run.sync_buffers()


def count_epoch(run: Run, end: EpochEnd) -> None:
    """The row's training numbers: the epoch's sums over every rank's batches (then reset)."""
    st, p = run.state, run.state.partial
    p["loss"], p["correct"], p["samples"] = distributed.all_sum(run.rank, [p["loss"], p["correct"], p["samples"]],
                                                                run.device)
    n = max(int(p["samples"]), 1)
    end.row.update({
        "epoch": end.epoch, "stage": st.stage + 1 if end.label is None else end.label, "density": run.density(),
        "lr": p["lr"], "train_loss": p["loss"] / n, "train_acc": p["correct"] / n, "epoch_seconds": p["seconds"],
        "images_per_s": n / p["seconds"] if p["seconds"] else 0.0})
    st.partial = {}


def validate(run: Run, end: EpochEnd) -> None:
    """``val_*`` metrics on the validation loader, when the stage validates this epoch."""
    if end.validate:
        val = run.evaluate(run.loaders.val, **run.loop_options)
        end.row.update({f"val_{k}": v for k, v in val.items()})


def keep_best(run: Run, end: EpochEnd) -> None:
    """With ``track_best``: a copy of the model whenever the validation metric is the best so far."""
    st, key = run.state, f"val_{run.settings.metric}"
    if end.track_best and end.validate and better(run.settings.metric, end.row[key], st.best_metric):
        st.best_metric, st.best_epoch = end.row[key], end.epoch
        st.best_model = state_to_cpu(run.model.state_dict())


def append_history(run: Run, end: EpochEnd) -> None:
    run.state.history.append(end.row)


def heartbeat(run: Run, end: EpochEnd) -> None:
    run.beat("train")


def feed_trackers(run: Run, end: EpochEnd) -> None:
    """The row and the per-layer densities to every tracker (TensorBoard, W&B, MLflow)."""
    for tracker in run.trackers:
        tracker.epoch(end.epoch, end.row, compressors.density(run.masks))


def checkpoint(run: Run, end: EpochEnd) -> None:
    """``checkpoint.pt`` (:func:`engine.checkpoint.save_run`): a run resumes after this epoch."""
    save_run(run)


def write_history(run: Run, end: EpochEnd) -> None:
    run.folder.write_rows(Files.HISTORY, Files.HISTORY_CSV, run.state.history)


def log_epoch(run: Run, end: EpochEnd) -> None:
    """The epoch's log line."""
    row, metric = end.row, run.settings.metric
    val_txt = f" val_{metric} {row[f'val_{metric}']:.4f}" if f"val_{metric}" in row else ""
    run.log(f"  epoch {end.epoch}: density {row['density']:.4f} train_loss {row['train_loss']:.4f} train_acc "
            f"{row['train_acc']:.4f}{val_txt} ({row['epoch_seconds']:.1f}s, {row['images_per_s']:,.0f} img/s)")


@dataclass(frozen=True)
class Callback:
    """The hook of a caller's ``on_epoch_end(epoch, row)`` (e.g. a sweep's progress display)."""

    fn: EpochCallback

    def __call__(self, run: Run, end: EpochEnd) -> None:
        self.fn(end.epoch, end.row)


DEFAULT: tuple[Hook, ...] = (step_schedule, sync_buffers, count_epoch, validate, keep_best, append_history, heartbeat,
                             feed_trackers, checkpoint, write_history, log_epoch)


def default_hooks(on_epoch_end: EpochCallback | None = None) -> list[Hook]:
    """:data:`DEFAULT` in order, then the caller's ``on_epoch_end`` when there is one."""
    return [*DEFAULT, *([Callback(on_epoch_end)] if on_epoch_end is not None else [])]


def end_epoch(run: Run, epoch: int, *, validate: bool, track_best: bool, label: Any = None) -> EpochEnd:
    """After the last batch of data epoch ``epoch`` (0-based): run ``run.hooks`` in order."""
    end = EpochEnd(epoch + 1, validate, track_best, label)
    for hook in run.hooks:
        hook(run, end)
    return end
