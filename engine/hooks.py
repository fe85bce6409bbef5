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
row's training numbers), :func:`check_divergence` (a diverged run fails here: it is never kept as the best
model nor checkpointed), :func:`validate`, :func:`keep_best`, :func:`append_history`, :func:`heartbeat`,
:func:`feed_trackers`, :func:`checkpoint`, :func:`write_history`, :func:`log_epoch`, then the caller's
``on_epoch_end(epoch, row)`` (:class:`Callback`) when there is one.

Hooks run on every rank (the collectives in :func:`sync_buffers` and :func:`count_epoch` need all of them);
what they write goes through ``run.folder``, which only rank 0 really writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import compressors
from engine.checkpoint import save_run
from engine.loop import TrainingDiverged
from engine.run import Run, state_to_cpu
from runspec.folder import Files
from utils import distributed

EpochCallback = Callable[[int, dict[str, Any]], None]

DIVERGENCE_FACTOR = 1e4
""":func:`check_divergence`: an epoch whose mean training loss is above ``DIVERGENCE_FACTOR`` times the
reference (the run's first epoch's training loss, at least ln(classes), the cross-entropy of a uniform
guess) has diverged.  A healthy run's loss falls from its first epoch (a learning-rate spike costs a few
times it, a bad run stalls at ln(classes)); a diverging one grows by orders of magnitude in an epoch or two
(the tiny digits run at lr 100: 2.3 -> 3e8 in its first epoch), long before its float32 values overflow."""


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


def _first_non_finite(named: list[tuple[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor | None]:
    """The names of the tensors of ``named`` holding a NaN or an infinity, and the first one.  One sum per
    tensor, stacked, and one host sync: a NaN or an infinity makes a sum non-finite, so finite sums (the
    healthy case) prove every value finite; only tensors whose sum is not (a non-finite value, or finite
    values overflowing the sum) are checked value by value.  A ResNet-18's 122 tensors take 16 ms on one
    CPU thread (``isfinite(t).all()`` of every tensor: 200 ms)."""
    if not named:
        return [], None
    with torch.no_grad():
        sums = torch.stack([t.sum() for _, t in named])
        suspects = (~torch.isfinite(sums)).nonzero().flatten().tolist()
        bad = [named[i] for i in suspects if not bool(torch.isfinite(named[i][1]).all())]
    return [n for n, _ in bad], bad[0][1] if bad else None


def _describe(t: torch.Tensor) -> str:
    t = t.detach().float()
    kinds = [f"{int(k.sum())} {what}" for k, what in ((t.isnan(), "NaN"), (t == math.inf, "+inf"),
                                                     (t == -math.inf, "-inf")) if bool(k.any())]
    return f"{', '.join(kinds)} of {t.numel()} values"


def check_divergence(run: Run, end: EpochEnd) -> None:
    """:class:`engine.loop.TrainingDiverged` (the run fails, ``status.json`` names the epoch and the tensor)
    when a parameter or floating-point buffer of the model (BN running statistics) holds a NaN or an
    infinity, or the epoch's mean training loss is not finite or above :data:`DIVERGENCE_FACTOR` times the
    run's first epoch's (at least ln(classes)).  Placed before :func:`keep_best` and :func:`checkpoint`, so a
    diverged state is never kept or checkpointed: a rerun resumes from the last good epoch.  The check is one
    sum per tensor, stacked, and one host sync per epoch (:func:`_first_non_finite`); every rank sees the
    same synced buffers, parameters and summed loss, so every rank raises."""
    tensors = [(n, t) for n, t in [*run.model.named_parameters(), *run.model.named_buffers()]
               if t.is_floating_point() or t.is_complex()]
    names, first = _first_non_finite(tensors)
    loss = end.row.get("train_loss")
    loss_text = f"train_loss {loss:.4g}" if loss is not None else "train_loss unknown"
    if first is not None:
        listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise TrainingDiverged(f"epoch {end.epoch}: {names[0]} is not finite ({_describe(first)}); "
                               f"{len(names)} of {len(tensors)} tensors are: {listed} ({loss_text})")
    if loss is None:
        return
    if not math.isfinite(loss):
        raise TrainingDiverged(f"epoch {end.epoch}: {loss_text}, the mean training loss, is not finite")
    history = run.state.history
    first_loss = history[0].get("train_loss") if history else None
    uniform = math.log(max(run.num_classes, 2))
    reference = max(first_loss, uniform) if first_loss is not None and math.isfinite(first_loss) else uniform
    if loss > DIVERGENCE_FACTOR * reference:
        why = ("the first epoch's train_loss" if reference != uniform
               else f"ln({run.num_classes}), a uniform guess's loss")
        raise TrainingDiverged(f"epoch {end.epoch}: {loss_text} exploded: above {DIVERGENCE_FACTOR:g} x "
                               f"{reference:.4g} ({why}; engine.hooks.DIVERGENCE_FACTOR)")


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


DEFAULT: tuple[Hook, ...] = (step_schedule, sync_buffers, count_epoch, check_divergence, validate, keep_best,
                             append_history, heartbeat, feed_trackers, checkpoint, write_history, log_epoch)


def default_hooks(on_epoch_end: EpochCallback | None = None) -> list[Hook]:
    """:data:`DEFAULT` in order, then the caller's ``on_epoch_end`` when there is one."""
    return [*DEFAULT, *([Callback(on_epoch_end)] if on_epoch_end is not None else [])]


def end_epoch(run: Run, epoch: int, *, validate: bool, track_best: bool, label: Any = None) -> EpochEnd:
    """After the last batch of data epoch ``epoch`` (0-based): run ``run.hooks`` in order."""
    end = EpochEnd(epoch + 1, validate, track_best, label)
    for hook in run.hooks:
        hook(run, end)
    return end
