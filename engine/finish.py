"""The end of a run: test the final and the best-validation model, count the costs, write the mask, the
final model, ``costs.json`` and ``results.json``, and hand the results to the trackers; once the run is
recorded completed, drop the checkpoints ``general.keep`` does not keep (:func:`release_checkpoints`)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

import compressors
from compressors.connectivity import UnsupportedNetwork, connectivity
from compressors.costs import Costs, count_costs
from engine.run import Run, state_to_cpu
from engine.trackers import hparams
from runspec.config import KeepConfig
from runspec.folder import CostRecord, Files, PruningRecord, RunFolder, RunResults


def costs(run: Run) -> Costs:
    """Parameters and FLOPs of one forward pass of one example of the dataset's input shape, dense and
    effective under the run's mask (:func:`compressors.costs.count_costs`; on the meta device)."""
    example = torch.zeros(1, *run.loaders.input_shape)
    if run.structures is not None and run.criterion.prunes:
        compact = run.structures.compact(run.model, run.structures.keep_from_masks(run.masks))
        return count_costs(run.model, example, compact=compact)
    return count_costs(run.model, example, masks=run.masks if run.criterion.prunes else None)


def ranks_record(run: Run) -> dict[str, Any]:
    """What a distributed run adds to ``results.json``."""
    if not run.rank.distributed:
        return {}
    return {"world_size": run.rank.world, "masks_verified_on_ranks": run.state.extra.get("masks_verified_on_ranks")}


def connectivity_record(run: Run) -> dict[str, Any]:
    """What every run adds to ``results.json`` about connectivity (Vysogorets & Kempe 2023): the effective
    sparsity of the scored weights (kept weights cut off from the input or the output counted as removed; the
    same denominator as ``achieved_sparsity``), the connected kept count, the disconnected count and the
    effective density per tensor (:func:`compressors.connectivity.connectivity`); ``effective_sparsity`` is
    null, with the reason in ``effective_sparsity_unsupported``, for a network outside the path graph
    (attention).  With ``reprune_disconnected`` the re-pruning record (``effective_pruning``) too."""
    scored = {n: run.masks[n] for n in run.scored if n in run.masks}
    try:
        record = connectivity(run.model, scored, run.loaders.input_shape).record()
    except UnsupportedNetwork as exc:
        record = {"effective_sparsity": None, "effective_sparsity_unsupported": str(exc)}
    if "effective_pruning" in run.state.extra:
        record["effective_pruning"] = run.state.extra["effective_pruning"]
    return record


def finish(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    """Test the final and the best-validation model; write mask, final model, costs and ``results.json``
    (with the experiment's ``extra``); returns the results."""
    st = run.state
    test = run.evaluate(run.loaders.test, run.model)
    final_state = copy.deepcopy(run.model.state_dict())
    best = dict(test)
    if st.best_model is not None:
        run.model.load_state_dict(st.best_model)
        best = run.evaluate(run.loaders.test, run.model)
        run.model.load_state_dict(final_state)
    run.folder.save_mask(run.masks)
    run.folder.save_torch(Files.FINAL_MODEL, state_to_cpu(final_state))
    # summarised over the scored weights (a structured mask also reaches BN channels, biases, classifier columns)
    scored = {n: run.masks[n] for n in run.scored if n in run.masks}
    st.pruning.update(compressors.mask_summary(scored, sum(p.numel() for p in run.model.parameters())),
                      mask_samples=len(run.loaders.mask_indices))
    counted = costs(run)
    run.folder.write(Files.COSTS, {**counted.to_json(), "model_inputs": {
        "num_classes": run.num_classes, "input_shape": list(run.loaders.input_shape)}})
    results = RunResults(test=test, best_val_test=best, best_val_epoch=st.best_epoch,
                         best_val_metric=st.best_metric, validation_metric=run.settings.metric,
                         validation_on_test_set=run.loaders.val_is_test,
                         epoch_seconds=[row["epoch_seconds"] for row in st.history],
                         pruning=PruningRecord(**st.pruning),
                         extra={**extra, **ranks_record(run), **connectivity_record(run)},
                         costs=CostRecord(**counted.totals())).to_json()
    run.folder.write(Files.RESULTS, results)
    for tracker in run.trackers:
        tracker.finish(hparams(run.spec), results)
    return results


def release_checkpoints(folder: RunFolder, keep: KeepConfig) -> list[str]:
    """Delete the checkpoints a completed run does not keep; returns the names deleted.

    Called by the runner once ``status.json`` says completed, i.e. after :func:`finish` wrote ``results.json``,
    ``final_model.pt`` and ``mask.pt`` (each atomically): ``checkpoint.prev.pt`` always (the fallback of an
    unfinished run), ``checkpoint.pt`` too when ``keep.checkpoint`` is ``"none"``; that deletion is recorded in
    ``status.json`` (``checkpoint_deleted``: when), so that a later repair refusal can say why the checkpoint is
    gone (:func:`checkpoint_not_kept`).  Neither file is read by ``report``, ``status`` or ``export``."""
    deleted = []
    if keep.checkpoint == "none" and folder.file(Files.CHECKPOINT).exists():
        # recorded before the deletion: a process killed in between leaves the record and the file (still usable)
        folder.set_status("completed", checkpoint_deleted=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for name in (Files.CHECKPOINT_PREV, *([Files.CHECKPOINT] if keep.checkpoint == "none" else [])):
        path = folder.file(name)
        if path.exists():
            path.unlink()
            deleted.append(name)
    return deleted


def checkpoint_not_kept(folder: RunFolder) -> str | None:
    """Why a completed run has no ``checkpoint.pt``, when :func:`release_checkpoints` deleted it (else None)."""
    when = (folder.status() or {}).get("checkpoint_deleted")
    if folder.file(Files.CHECKPOINT).exists() or not isinstance(when, str):
        return None
    return (f"{Files.CHECKPOINT} was not kept: general.keep.checkpoint 'none' deleted it when the run completed "
            f"({when})")
