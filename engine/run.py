"""A run in progress: what the stages of an experiment act on.

:class:`Run` holds the objects built from the :class:`runspec.RunSpec` (loaders, model, criterion, loss),
the current masks, optimizer and schedule, and a :class:`RunState` with everything else a resumed run
needs (position in the batch stream, history, records, best model, snapshots, pruning record).  The
state, the tensors and every RNG state go into one checkpoint (:mod:`engine.checkpoint`).

The training stream is a sequence of steps: step ``k`` is batch ``k mod E`` of data epoch ``k div E``
(``E`` batches per epoch, each epoch's order and augmentation seeded by (seed, epoch)), so a stage may
end inside an epoch and the next one goes on from the following batch.
"""

from __future__ import annotations

import copy
import itertools
import os
import socket
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

import compressors
import models
from compressors.cache import score_with_cache
from compressors.costs import Costs, count_costs
from compressors.structures import StructureSet, find_structures
from engine.checkpoint import DamagedCheckpoint, load_checkpoint, save_checkpoint
from engine.loop import MaskEnforcer, evaluate, make_scaler, prepare_model, train_epoch
from engine.trackers import Tracker, flat_scalars, open_trackers
from runspec import RunSpec
from runspec.folder import CostRecord, Files, Heartbeat, PruningRecord, RunFolder, RunResults, mask_indices_record
from utils import distributed
from utils.seeding import derive_seed, rng_state, seed_everything, set_rng_state

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunState:
    """What a run has done so far (all of it checkpointed)."""

    stage: int = 0                                     # index of the current stage
    step: int = 0                                      # training steps taken
    train: dict[str, int] | None = None                # the Train stage in progress: {"start", "end"} steps
    optimizer: dict[str, Any] | None = None            # how the current optimizer was built: {"lr", "epochs"}
    partial: dict[str, float] = field(default_factory=dict)  # sums over the current epoch's batches so far
    history: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    best_model: dict[str, torch.Tensor] | None = None
    pruning: dict[str, Any] = field(default_factory=lambda: vars(PruningRecord()))
    snapshots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # an experiment's own values (tensors welcome)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def better(metric: str, new: float, best: float | None) -> bool:
    """Is ``new`` a better value of validation ``metric`` than ``best``?"""
    return best is None or (new < best if metric == "loss" else new > best)


class Capped:
    """The first ``limit`` batches of every pass over ``loader``."""

    def __init__(self, loader: Any, limit: int) -> None:
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)


class QuietFolder(RunFolder):
    """The run folder as the other ranks of a distributed run see it: read, never written."""

    def write(self, name: str, obj: Any) -> None:
        pass

    def write_rows(self, name: str, csv_name: str, rows: list[dict[str, Any]]) -> None:
        pass

    def save_mask(self, masks: dict[str, Any]) -> None:
        pass

    def save_torch(self, name: str, obj: Any) -> None:
        pass

    def set_status(self, status: Any, **fields: Any) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class Run:
    """The live objects of one run (see the module docstring)."""

    def __init__(self, spec: RunSpec, folder: RunFolder, *, log: Callable[[str], None] = print,
                 on_epoch_end: EpochCallback | None = None) -> None:
        self.rank = distributed.from_environment()
        self.spec, self.cfg = spec, spec.config
        # one process writes the run folder and prints; the other ranks of a distributed run keep quiet
        self.folder = folder if self.rank.main else QuietFolder(folder.path, folder.cache_dir)
        self.log = log if self.rank.main else (lambda text: None)
        self.on_epoch_end = on_epoch_end
        self.device = spec.device()
        if self.rank.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.rank.local)
        self.state = RunState()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.trackers: list[Tracker] = []
        self.total_epochs = 0  # set by the engine from the experiment's stages

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build loaders, model (at its seeded initialisation), criterion and loss; masks all ones."""
        spec, tr = self.spec, self.cfg.training
        if self.cfg.general.deterministic:
            torch.use_deterministic_algorithms(True)
        distributed.init(self.rank, self.device.type)
        self.loaders = spec.build_loaders(self.device, self.rank.rank, self.rank.world)
        self.num_classes = spec.num_classes(self.loaders)
        self.model = spec.build_model(self.loaders)
        if self.rank.distributed and tr.sync_bn:
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                self.log("  training.sync_bn is ignored on the CPU (SyncBatchNorm needs CUDA)")
        self.model = self.model.to(self.device)
        # self.model keeps plain state_dict keys; self.train_model is what the loop calls (maybe compiled, DDP)
        self.train_model = prepare_model(self.model, self.device, channels_last=tr.channels_last,
                                         compile=tr.compile, log=self.log)
        if self.rank.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)
        self.scaler = make_scaler(self.device, tr.amp)
        self.loop_options = {"amp": tr.amp, "channels_last": tr.channels_last}
        self.loss_fn = spec.build_loss()
        self.criterion = spec.build_criterion()
        comp = tr.compressor
        names = spec.prunable_names(self.model)  # compressor.prunable (with prune_classifier / prune_biases)
        # structured pruning (compressor.structure): the structures of this model; attention heads' packed q/k/v
        # weights (nn.MultiheadAttention.in_proj_weight) are scored too, as parts of the heads
        self.structures: StructureSet | None = None
        if comp.structure != "none":
            self.structures = find_structures(self.model, comp.structure, self.loaders.input_shape)
            names += [n for n in self.structures.head_weights() if n not in names]
        self.scored = list(names)
        params = dict(self.model.named_parameters())
        self.set_masks({n: torch.ones_like(params[n]) for n in names})
        self.steps_per_epoch = min(len(self.loaders.train), tr.max_batches or len(self.loaders.train))
        if self.steps_per_epoch < 1:
            raise ValueError(f"dataset '{self.cfg.dataset.name}': the training set yields no batch")
        drawn = f"per_class_samples={comp.per_class_samples}" if comp.per_class_samples else "whole training subset"
        drawn += (f", seed {self.cfg.general.seed}" if comp.mask_sampling != "unseeded"
                  else ", unseeded (fresh OS entropy: reuse these rows through compressor.mask_indices)")
        source = comp.mask_indices or drawn
        self.folder.write(Files.MASK_INDICES, mask_indices_record(self.loaders.mask_indices, source,
                                                                  self.cfg.dataset.name))

    def hparams(self) -> dict[str, Any]:
        """The run's settings for trackers: the main choices and every non-default value (flattened)."""
        cfg, comp = self.cfg, self.cfg.training.compressor
        main = {"experiment": cfg.general.experiment, "dataset": cfg.dataset.name, "model": cfg.model.name,
                "criterion": comp.name, "sparsity": comp.sparsity, "mask": comp.mask, "seed": cfg.general.seed}
        return {**flat_scalars(self.spec.identity()), **main}

    def start_trackers(self) -> None:
        """Open ``general.trackers`` (after a resume: dropping what was logged past the checkpoint); rank 0."""
        if not self.rank.main:
            return
        root = self.folder.cache_dir.parent if self.folder.cache_dir is not None else self.folder.path
        self.trackers = open_trackers(self.cfg.general.trackers, self.folder.path, store=root / "mlruns",
                                      first_epoch=len(self.state.history), name=self.cfg.general.id or self.spec.hash(),
                                      run_id=self.spec.hash(), config=self.spec.to_dict(), hparams=self.hparams())

    def close_trackers(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    # ---------------------------------------------------------------------- masks, optimizer
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Use ``masks`` from now on: pruned weights are zeroed and kept at zero by the loop."""
        self.masks = {n: m.to(self.device) for n, m in masks.items()}
        pruned = self.criterion.prunes and any(not bool(m.all()) for m in self.masks.values())
        self.enforcer = MaskEnforcer(self.model, self.masks if pruned else {})
        self.enforcer.apply_to_weights()

    def capped(self, loader: Any) -> Any:
        """``loader``, or its first ``training.max_batches`` batches in every pass (smoke runs)."""
        cap = self.cfg.training.max_batches
        return loader if cap is None else Capped(loader, cap)

    def evaluate(self, loader: Any, model: torch.nn.Module | None = None, **options: Any) -> dict[str, float]:
        return evaluate(model or self.train_model, self.capped(loader), self.loss_fn, self.device, self.num_classes,
                        **options)

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN statistics drift apart in the local training batches)."""
        if self.rank.distributed:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def ablation_generator(self) -> torch.Generator:
        """The ablations' own random stream, seeded from the run seed (the global RNG is left alone)."""
        return torch.Generator().manual_seed(derive_seed(self.cfg.general.seed, "ablation"))

    @torch.no_grad()
    def reinitialise_kept(self) -> None:
        """The "reinit" ablation: the kept weights re-drawn from the initial distribution (a fresh network of
        the same architecture with its own seed), the mask unchanged."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.general.seed, "ablation-reinit"))
            fresh = models.build(self.cfg.model.name, num_classes=self.num_classes,
                                 input_shape=self.loaders.input_shape, **self.cfg.model.options)
        params, drawn = dict(self.model.named_parameters()), dict(fresh.named_parameters())
        for n, m in self.masks.items():
            params[n].copy_(drawn[n].to(params[n].device) * m.to(params[n].dtype))

    def verify_masks(self) -> None:
        """A distributed run's ranks scored the same network on the same data: their masks must agree."""
        if not distributed.same_on_every_rank(self.rank, list(self.masks.values()), self.device):
            raise RuntimeError(f"the {self.rank.world} ranks chose different masks (nondeterministic scoring?)")
        self.state.extra["masks_verified_on_ranks"] = self.rank.world

    def density(self) -> float:
        return 1.0 - compressors.global_sparsity({n: self.masks[n] for n in self.scored})

    def new_optimizer(self, epochs: int, learning_rate: float | None = None) -> None:
        """A fresh optimizer and per-epoch schedule over ``epochs`` epochs (``learning_rate``: else the config's)."""
        self.state.optimizer = {"lr": learning_rate, "epochs": epochs}
        self.optimizer = self.spec.build_optimizer(self.model, learning_rate)
        self.scheduler = self.spec.build_scheduler(self.optimizer, max(epochs, 1))

    # ------------------------------------------------------------------------------- scoring
    def score(self, sparsity: float, seed_parts: tuple[Any, ...] = ("scoring",)) -> compressors.ScoreMap:
        """Score the masked weights with the run's criterion through the score cache; the times, cache use
        and diagnostics go into the pruning record."""
        pruning = self.state.pruning
        self.log(f"  scoring {sum(m.numel() for m in self.masks.values()):,} weights with {self.criterion.name} on "
                 f"{len(self.loaders.mask_indices)} mask samples ({len(self.loaders.mask)} batches)")
        self.beat("scoring")
        self.sync_buffers()
        seed_everything(derive_seed(self.cfg.general.seed, *seed_parts))
        tic = time.perf_counter()
        scores, info = score_with_cache(
            self.criterion, self.model, self.loaders.mask, torch.nn.CrossEntropyLoss(), names=self.scored,
            sparsity=sparsity if self.criterion.iterative else None, cache_dir=self.folder.cache_dir,
            mask_indices=self.loaders.mask_indices)
        pruning["scoring_seconds"] += time.perf_counter() - tic
        pruning.update(info, criterion_diagnostics=scores.diagnostics)
        if info["score_cache"] != "off":
            pruning["score_cache_hits" if info["score_cache"] == "hit" else "score_cache_misses"] += 1
        return scores

    # ------------------------------------------------------------------------------ training
    def train_batches(self, epoch: int, offset: int, count: int) -> None:
        """Train on batches ``offset .. offset + count - 1`` of data epoch ``epoch``."""
        partial = self.state.partial
        if not partial:
            partial.update(lr=self.optimizer.param_groups[0]["lr"], loss=0.0, correct=0.0, samples=0, seconds=0.0)
        self.loaders.set_epoch(epoch, start_batch=offset)
        batches = itertools.islice(self.loaders.train, count)
        stats = train_epoch(self.train_model, batches, self.loss_fn, self.optimizer, self.device, self.enforcer,
                            self.cfg.training.grad_clip, desc=f"epoch {epoch + 1}/{self.last_epoch()}",
                            scaler=self.scaler, total=count, **self.loop_options)
        partial["loss"] += stats.loss * stats.samples
        partial["correct"] += stats.acc * stats.samples
        partial["samples"] += stats.samples
        partial["seconds"] += stats.seconds
        self.state.step += count

    def beat(self, phase: str) -> None:
        """Rewrite ``heartbeat.json`` (see :class:`runspec.folder.Heartbeat`)."""
        history = self.state.history
        seconds = sum(r["epoch_seconds"] for r in history) / len(history) if history else 0.0
        self.folder.write(Files.HEARTBEAT, vars(Heartbeat(
            phase=phase, epoch=self.state.step // self.steps_per_epoch, step=self.state.step,
            total_epochs=self.total_epochs, epoch_seconds=seconds, host=socket.gethostname(), pid=os.getpid(),
            time=time.time())))

    def last_epoch(self) -> int:
        """The epoch the current Train stage ends in."""
        end = self.state.train["end"] if self.state.train else self.state.step
        return -(-end // self.steps_per_epoch)

    def end_epoch(self, epoch: int, *, validate: bool, track_best: bool, label: Any = None) -> None:
        """After the last batch of data epoch ``epoch``: schedule step, validation, history row,
        checkpoint, log line and the epoch callback."""
        st, p = self.state, self.state.partial
        self.scheduler.step()
        self.sync_buffers()
        p["loss"], p["correct"], p["samples"] = distributed.all_sum(self.rank, [p["loss"], p["correct"],
                                                                              p["samples"]], self.device)
        n = max(int(p["samples"]), 1)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "stage": st.stage + 1 if label is None else label, "density": self.density(),
            "lr": p["lr"], "train_loss": p["loss"] / n, "train_acc": p["correct"] / n, "epoch_seconds": p["seconds"],
            "images_per_s": n / p["seconds"] if p["seconds"] else 0.0}
        st.partial = {}
        metric = self.cfg.validation.metric
        if validate:
            val = self.evaluate(self.loaders.val, **self.loop_options)
            row.update({f"val_{k}": v for k, v in val.items()})
            if track_best and better(metric, val[metric], st.best_metric):
                st.best_metric, st.best_epoch = val[metric], epoch + 1
                st.best_model = state_to_cpu(self.model.state_dict())
        st.history.append(row)
        self.beat("train")
        for tracker in self.trackers:
            tracker.epoch(epoch + 1, row, compressors.density(self.masks))
        self.checkpoint()
        self.folder.write_rows(Files.HISTORY, Files.HISTORY_CSV, st.history)
        val_txt = f" val_{metric} {row[f'val_{metric}']:.4f}" if f"val_{metric}" in row else ""
        self.log(f"  epoch {epoch + 1}: density {row['density']:.4f} train_loss {row['train_loss']:.4f} train_acc "
                 f"{row['train_acc']:.4f}{val_txt} ({row['epoch_seconds']:.1f}s, {row['images_per_s']:,.0f} img/s)")
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, row)

    def test(self) -> dict[str, float]:
        return self.evaluate(self.loaders.test, **self.loop_options)

    def record(self, row: dict[str, Any]) -> None:
        """Append an experiment record (``iterations.json`` / ``.csv``)."""
        self.state.records.append(row)
        self.folder.write_rows(Files.RECORDS, Files.RECORDS_CSV, self.state.records)

    # --------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        """Write ``checkpoint.pt``; the one it replaces is kept as ``checkpoint.prev.pt``, the fallback when
        the newest is found damaged.  Rank 0 only."""
        if not self.rank.main:
            return
        save_checkpoint(self.folder.file(Files.CHECKPOINT), {
            "stage": self.state.stage, "epoch": self.state.step // self.steps_per_epoch, "state": self.state.to_dict(),
            "model": self.model.state_dict(),
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(), "rng": rng_state(),
        }, experiment=self.cfg.general.experiment, run_hash=self.spec.hash(),
            previous=self.folder.file(Files.CHECKPOINT_PREV))

    def restore(self) -> bool:
        """Resume from the run folder's newest intact checkpoint, if there is one (checked to be this run's)."""
        ckpt = self.intact_checkpoint()
        if ckpt is None:
            return False
        self.state = RunState.from_dict(ckpt["state"])
        self.model.load_state_dict(ckpt["model"])
        self.set_masks(ckpt["masks"])
        if self.state.optimizer is not None:
            self.new_optimizer(self.state.optimizer["epochs"], self.state.optimizer["lr"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return True

    def intact_checkpoint(self) -> dict[str, Any] | None:
        """``checkpoint.pt``, else ``checkpoint.prev.pt`` when the first is damaged; None when neither is
        there or both are damaged (the run starts over).  A damaged file is moved aside (``.damaged``) and
        what was done is logged and noted in ``status.json``."""
        damaged = []
        for name in (Files.CHECKPOINT, Files.CHECKPOINT_PREV):
            path = self.folder.file(name)
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path, experiment=self.cfg.general.experiment, run_hash=self.spec.hash(),
                                       map_location=self.device)
                compressors.check_masks(ckpt["masks"], f"{path}: masks")
            except DamagedCheckpoint as exc:
                damaged.append(str(exc))
                os.replace(path, path.with_name(path.name + Files.DAMAGED))
                continue
            if damaged:
                self.report_damage(damaged, f"resumed from {name} (epoch {ckpt['epoch']})")
            return ckpt
        if damaged:
            self.report_damage(damaged, "no intact checkpoint left: the run starts over")
        return None

    def report_damage(self, damaged: list[str], outcome: str) -> None:
        text = f"damaged checkpoint: {'; '.join(damaged)} (moved aside as *{Files.DAMAGED}); {outcome}"
        self.log(f"  {text}")
        self.folder.note(text)

    def ranks_record(self) -> dict[str, Any]:
        """What a distributed run adds to ``results.json``."""
        if not self.rank.distributed:
            return {}
        verified = self.state.extra.get("masks_verified_on_ranks")
        return {"world_size": self.rank.world, "masks_verified_on_ranks": verified}

    # -------------------------------------------------------------------------------- finish
    def costs(self) -> Costs:
        """Parameters and FLOPs of one forward pass of one example of the dataset's input shape, dense and
        effective under the run's mask (:func:`compressors.costs.count_costs`; on the meta device)."""
        example = torch.zeros(1, *self.loaders.input_shape)
        if self.structures is not None and self.criterion.prunes:
            compact = self.structures.compact(self.model, self.structures.keep_from_masks(self.masks))
            return count_costs(self.model, example, compact=compact)
        return count_costs(self.model, example, masks=self.masks if self.criterion.prunes else None)

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Test the final and the best-validation model; write mask, final model and ``results.json``."""
        st = self.state
        test = self.evaluate(self.loaders.test, self.model)
        final_state = copy.deepcopy(self.model.state_dict())
        best = dict(test)
        if st.best_model is not None:
            self.model.load_state_dict(st.best_model)
            best = self.evaluate(self.loaders.test, self.model)
            self.model.load_state_dict(final_state)
        self.folder.save_mask(self.masks)
        self.folder.save_torch(Files.FINAL_MODEL, state_to_cpu(final_state))
        # summarised over the scored weights (a structured mask also reaches BN channels, biases, classifier columns)
        scored = {n: self.masks[n] for n in self.scored if n in self.masks}
        st.pruning.update(compressors.mask_summary(scored, sum(p.numel() for p in self.model.parameters())),
                          mask_samples=len(self.loaders.mask_indices))
        costs = self.costs()
        self.folder.write(Files.COSTS, {**costs.to_json(), "model_inputs": {
            "num_classes": self.num_classes, "input_shape": list(self.loaders.input_shape)}})
        results = RunResults(test=test, best_val_test=best, best_val_epoch=st.best_epoch,
                             best_val_metric=st.best_metric, validation_metric=self.cfg.validation.metric,
                             validation_on_test_set=self.loaders.val_is_test,
                             epoch_seconds=[row["epoch_seconds"] for row in st.history],
                             pruning=PruningRecord(**st.pruning), extra={**extra, **self.ranks_record()},
                             costs=CostRecord(**costs.totals())).to_json()
        self.folder.write(Files.RESULTS, results)
        for tracker in self.trackers:
            tracker.finish(self.hparams(), results)
        return results
