"""The composition root: a :class:`runspec.RunSpec` becomes the live objects of one run, here and nowhere else.

:func:`assemble` writes the run folder's first files (``config.json``, ``environment.json``), places the run
(device, rank), seeds, and builds in this order: the loaders (every RNG seeded with the run seed S first),
the model (seeded with S again: seed S gives the official seed-S network), SyncBatchNorm, device placement,
channels-last / ``torch.compile``, DistributedDataParallel, the gradient scaler, the loss, the criterion,
the prunable names and structures, the initial masks (all ones), the optimizer / schedule factories and the
end-of-epoch hooks (:func:`engine.hooks.default_hooks`, extended by the experiment's ``hooks``).  It then
records the mask data (``mask_indices.json``).  The config is read here and turned into typed settings for
the layers below (:class:`data.LoaderSettings`, :class:`data.MaskDataSettings`, :class:`data.Placement`,
:class:`engine.run.LoopSettings`); the stages get theirs from the experiment.

The factories below are the one way to build each piece (the reinit ablation's fresh network comes from
:func:`build_model`, tests and benchmarks use them too)::

    loaders = build_loaders(spec.config, torch.device("cpu"))      # seeds first, as a run does
    model = initial_model(spec.config, loaders.num_classes, loaders.input_shape)
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

import compressors
import data
import models
from compressors.structures import find_structures
from engine.hooks import EpochCallback, default_hooks
from engine.loop import make_scaler, prepare_model
from engine.run import LoopSettings, Run
from runspec import RunSpec
from runspec.config import CompressorConfig, ExperimentConfig, ModelConfig
from runspec.folder import Files, RunFolder, mask_indices_record
from runspec.spec import class_count_problem, model_build_options
from runspec.training import build_optimizer, build_scheduler
from utils import distributed
from utils.environment import environment
from utils.seeding import seed_everything

if TYPE_CHECKING:
    from engine.experiment import Experiment


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


# ------------------------------------------------------------------------------------ config -> settings
def loader_settings(cfg: ExperimentConfig) -> data.LoaderSettings:
    ds = cfg.dataset
    return data.LoaderSettings(batch_size=ds.batch_size, eval_batch_size=ds.eval_batch_size,
                               num_workers=ds.num_workers, train4val=ds.train4val, val_fraction=ds.val_fraction,
                               shuffle=ds.shuffle, kind=ds.loader)


def mask_data_settings(comp: CompressorConfig) -> data.MaskDataSettings:
    """The mask data of ``training.compressor`` (a ``mask_indices`` file is read here)."""
    return data.MaskDataSettings(
        batch_size=comp.batch_size, per_class_samples=comp.per_class_samples,
        indices=data.read_index_file(comp.mask_indices) if comp.mask_indices else None,
        indices_source=comp.mask_indices or "", transform=comp.mask_transform, order=comp.mask_order,
        sampling=comp.mask_sampling)


def loop_settings(cfg: ExperimentConfig) -> LoopSettings:
    tr = cfg.training
    return LoopSettings(grad_clip=tr.grad_clip, max_batches=tr.max_batches, amp=tr.amp, channels_last=tr.channels_last,
                        metric=cfg.validation.metric, frequency=cfg.validation.frequency)


# ------------------------------------------------------------------------------------------- factories
def build_loaders(cfg: ExperimentConfig, device: torch.device, rank: int = 0, world: int = 1) -> data.Loaders:
    """Train / val / test / mask loaders of the run (the training batches split over ``world`` ranks);
    seeds every RNG with the run seed first."""
    ds = cfg.dataset
    seed_everything(cfg.general.seed)
    splits = data.get(ds.name)(root=ds.root, download=ds.download, normalization=ds.normalization,
                               **ds.options).load()
    loaders = data.build_loaders(splits, loader_settings(cfg), mask_data_settings(cfg.training.compressor),
                                 seed=cfg.general.seed, placement=data.Placement(device, rank, world),
                                 name=f"dataset '{ds.name}'")
    cap = cfg.training.max_batches
    return loaders if cap is None else data.smoke_eval_loaders(loaders, cap)


def num_classes(cfg: ExperimentConfig, loaders: data.Loaders) -> int:
    """``model.num_classes``, else the dataset's; a ValueError when the model would have fewer outputs than
    the data has classes (known here, from the loaded data, for datasets such as imagefolder)."""
    given = cfg.model.num_classes
    problem = class_count_problem(given, loaders.num_classes, cfg.dataset.name)
    if problem:
        raise ValueError(f"model.num_classes: {problem}")
    return given or loaders.num_classes


def build_model(model: ModelConfig, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The network of ``model.class`` with ``model.options``: the one model factory of a run (its initial
    network, the reinit ablation's fresh one).  Seeding is the caller's."""
    return models.build(model.name, num_classes=num_classes, input_shape=tuple(input_shape),
                        **model_build_options(model))


def initial_model(cfg: ExperimentConfig, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The network at initialisation, built right after seeding every RNG with the raw run seed S (as the
    official code's ``torch.manual_seed(S)`` before building): seed S gives the official seed-S network."""
    seed_everything(cfg.general.seed)
    return build_model(cfg.model, num_classes, input_shape)


def prunable_names(comp: CompressorConfig, model: nn.Module) -> list[str]:
    """The prunable parameters of ``model`` under ``training.compressor.prunable`` and its options."""
    if comp.prunable == "official_names":
        return compressors.prunable_names(model, rule="official_names")
    return compressors.prunable_names(model, include_classifier=comp.prune_classifier,
                                      include_biases=comp.prune_biases)


def build_criterion(comp: CompressorConfig) -> compressors.Compressor:
    return compressors.build(comp.name, **comp.options)


def build_loss(cfg: ExperimentConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.training.criterion.kwargs.label_smoothing)


def run_device(spec: RunSpec, rank: distributed.Rank) -> torch.device:
    """The spec's device; a distributed run's ranks use their local GPU."""
    device = spec.device()
    if rank.distributed and device.type == "cuda":
        device = torch.device("cuda", rank.local)
    return device


# --------------------------------------------------------------------------------------------- assembly
def assemble(spec: RunSpec, folder: RunFolder, *, log: Callable[[str], None] = print,
             on_epoch_end: EpochCallback | None = None, experiment: Experiment | None = None) -> Run:
    """The live run of ``spec`` in ``folder`` at its seeded initialisation, masks all ones (see the module
    docstring); ``experiment`` may extend the end-of-epoch hooks (``experiment.hooks(run, default)``)."""
    cfg, tr, comp = spec.config, spec.config.training, spec.config.training.compressor
    rank = distributed.from_environment()
    # one process writes the run folder and prints; the other ranks of a distributed run keep quiet
    folder = folder if rank.main else QuietFolder(folder.path, folder.cache_dir)
    log = log if rank.main else (lambda text: None)
    device = run_device(spec, rank)
    folder.write(Files.CONFIG, spec.to_dict())
    if rank.main:
        folder.write(Files.ENVIRONMENT, environment(device))
    if cfg.general.deterministic:
        torch.use_deterministic_algorithms(True)
    distributed.init(rank, device.type)
    loaders = build_loaders(cfg, device, rank.rank, rank.world)
    classes = num_classes(cfg, loaders)
    model = initial_model(cfg, classes, loaders.input_shape)
    if rank.distributed and tr.sync_bn:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("  training.sync_bn is ignored on the CPU (SyncBatchNorm needs CUDA)")
    model = model.to(device)
    # model keeps plain state_dict keys; train_model is what the loop calls (maybe compiled, DDP)
    train_model = prepare_model(model, device, channels_last=tr.channels_last, compile=tr.compile, log=log)
    if rank.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=ids)
    scaler = make_scaler(device, tr.amp)
    loss_fn = build_loss(cfg)
    criterion = build_criterion(comp)
    names = prunable_names(comp, model)
    # structured pruning (compressor.structure): the structures of this model; attention heads' packed q/k/v
    # weights (nn.MultiheadAttention.in_proj_weight) are scored too, as parts of the heads
    structures = None
    if comp.structure != "none":
        structures = find_structures(model, comp.structure, loaders.input_shape)
        names += [n for n in structures.head_weights() if n not in names]
    run = Run(spec=spec, folder=folder, rank=rank, device=device, log=log, seed=cfg.general.seed, loaders=loaders,
              num_classes=classes, model=model, train_model=train_model, loss_fn=loss_fn, criterion=criterion,
              scaler=scaler, settings=loop_settings(cfg), structures=structures, scored=list(names),
              steps_per_epoch=min(len(loaders.train), tr.max_batches or len(loaders.train)),
              make_model=functools.partial(build_model, cfg.model, classes, loaders.input_shape),
              make_optimizer=functools.partial(_optimizer, tr.optimizer),
              make_schedule=functools.partial(_schedule, tr.optimizer))
    params = dict(model.named_parameters())
    run.set_masks({n: torch.ones_like(params[n]) for n in names})
    if run.steps_per_epoch < 1:
        raise ValueError(f"dataset '{cfg.dataset.name}': the training set yields no batch")
    drawn = f"per_class_samples={comp.per_class_samples}" if comp.per_class_samples else "whole training subset"
    drawn += (f", seed {cfg.general.seed}" if comp.mask_sampling != "unseeded"
              else ", unseeded (fresh OS entropy: reuse these rows through compressor.mask_indices)")
    folder.write(Files.MASK_INDICES, mask_indices_record(loaders.mask_indices, comp.mask_indices or drawn,
                                                         cfg.dataset.name))
    hooks = default_hooks(on_epoch_end)
    run.hooks = list(experiment.hooks(run, hooks)) if experiment is not None else hooks
    return run


def _optimizer(cfg: Any, model: nn.Module, learning_rate: float | None) -> torch.optim.Optimizer:
    return build_optimizer(model, cfg, learning_rate)


def _schedule(cfg: Any, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    return build_scheduler(optimizer, cfg, epochs)
