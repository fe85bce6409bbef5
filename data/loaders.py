"""Loaders for one run: train (reshuffled every epoch, seeded), val, test and the mask data.

- ``train4val``: a seeded, stratified ``val_fraction`` of the training set becomes the validation set
  (evaluation transform); otherwise validation uses the test set, as the official code does.
- Mask data: ``per_class_samples`` training samples of each class (evaluation transform), chosen
  with the run seed only, so every criterion of one seed scores the same samples; their order is
  shuffled with the same seed and split into batches of ``compressor.batch_size``.  ``per_class_samples``
  None: every sample of the training subset (what is left after ``train4val``), order shuffled the same
  way.  ``mask_indices`` (a list read by :func:`read_index_file`): exactly these training-set rows, in
  this order (checked to lie in the training subset).
- Training order: epoch ``e`` is shuffled with a generator seeded from (seed, e), so a resumed run
  sees exactly the batches an uninterrupted one would; ``shuffle=False``: the stored order every epoch
  (the official CIFAR loaders).
- Official-code switches of the mask data: ``mask_transform="train"`` shows it with the training
  augmentation, ``mask_order="reshuffle"`` reshuffles it on every pass (torch's global RNG, which the run
  seeds before scoring), ``mask_sampling="unseeded"`` draws the samples from fresh OS entropy (the rows
  drawn are in ``Loaders.mask_indices``, which the run records).
- ``kind="classic"`` (default): torch DataLoaders over the dataset's PIL/torchvision pipeline.
  ``kind="device"``: train / val / test are :class:`data.device_loader.DeviceLoader` objects holding the
  uint8 images on the training device (same permutation per epoch as the classic loader, augmentation
  batched on the device; no DataLoader is built for them); the mask data stays a classic DataLoader, so
  criteria score the same samples with either loader.

:func:`build_loaders` takes three typed settings: :class:`LoaderSettings` (the ``dataset`` section),
:class:`MaskDataSettings` (the mask-data fields of ``training.compressor``) and :class:`Placement` (device,
rank, world); the run's composition root (:mod:`engine.assemble`) fills them in from the config.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from data.base import DataSplits
from data.device_loader import DeviceLoader
from utils.distributed import shard
from utils.io import CONFIG_FILE_LIMIT, read_regular_text
from utils.seeding import derive_seed, epoch_permutation


class EpochShuffler(Sampler[int]):
    """Random permutation per epoch from a generator seeded by (seed, epoch); call set_epoch(e).  With
    ``set_epoch(e, start)`` iteration begins at position ``start`` of that permutation.  With ``world``
    ranks, each yields its slice of every global batch of ``global_batch`` samples
    (:func:`utils.distributed.shard`): together they see the single-process run's batches."""

    def __init__(self, n: int, seed: int, *, global_batch: int = 1, rank: int = 0, world: int = 1,
                 shuffle: bool = True) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.global_batch, self.rank, self.world, self.shuffle = global_batch, rank, world, shuffle

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        perm = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        return shard(perm, self.global_batch, self.rank, self.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:].tolist())

    def __len__(self) -> int:
        return len(self.order()) if self.world > 1 else self.n


LOADER_KINDS = ("classic", "device")
AnyLoader = Union[DataLoader, DeviceLoader]


@dataclass
class Loaders:
    train: AnyLoader
    val: AnyLoader
    test: AnyLoader
    mask: DataLoader
    num_classes: int
    input_shape: tuple[int, ...]
    mask_indices: list[int]
    val_is_test: bool
    seed: int

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the shuffling (and worker seeds / augmentation draws) of training epoch ``epoch``; the next
        pass over ``train`` starts at batch ``start_batch`` of it."""
        if isinstance(self.train, DeviceLoader):
            self.train.set_epoch(epoch, start_batch)
            return
        self.train.sampler.set_epoch(epoch, start_batch * self.train.batch_size)  # type: ignore[union-attr]
        if self.train.generator is not None:
            self.train.generator.manual_seed(derive_seed(self.seed, "workers", epoch))


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; ``fraction`` of every class held out, chosen with ``seed``."""
    rng = np.random.default_rng(derive_seed(seed, "train4val"))
    keep, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n_held = int(round(fraction * len(idx)))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def mask_indices(targets: np.ndarray, per_class: Optional[int], seed: int,
                 pool: Optional[np.ndarray] = None) -> list[int]:
    """``per_class`` indices of every class from ``pool`` (default: all), chosen and ordered by ``seed``;
    ``per_class`` None: all of ``pool``, ordered by ``seed``."""
    pool = np.arange(len(targets)) if pool is None else np.asarray(pool)
    rng = np.random.default_rng(derive_seed(seed, "mask-data"))
    if per_class is None:
        order = np.sort(pool)
        rng.shuffle(order)
        return [int(i) for i in order]
    chosen = []
    for c in np.unique(targets[pool]):
        idx = pool[targets[pool] == c]
        if len(idx) < per_class:
            raise ValueError(f"compressor.per_class_samples={per_class} but class {c} has only {len(idx)} "
                             f"training samples; valid: 1..{len(idx)}")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    order = np.concatenate(chosen)
    rng.shuffle(order)
    return [int(i) for i in order]


MASK_INDICES_FIELD = "training.compressor.mask_indices"


def _kind(value: object) -> str:
    """What a JSON value is, in words, without its content (an error must never quote the file)."""
    return {bool: "a boolean", str: "a string", float: "a float", dict: "an object", list: "a list",
            type(None): "null"}.get(type(value), type(value).__name__)


def read_index_file(path: str | Path) -> list[int]:
    """The training-set indices of a mask-index file, in file order.  Accepted: a JSON list of integers, a JSON
    object with an ``"indices"`` list (the ``mask_indices.json`` a run folder records), or plain text with
    whitespace- or comma-separated integers.  Only a regular file of at most ``CONFIG_FILE_LIMIT`` (64 MiB)
    is read (a device, FIFO, socket or directory is refused unopened).  A ValueError naming the file and the
    field otherwise; it never quotes the file's content (the path may name any file, e.g. ``/etc/shadow``)."""
    where = f"{MASK_INDICES_FIELD} file {str(path)!r}"
    text = read_regular_text(Path(path), where, CONFIG_FILE_LIMIT)
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise ValueError(f"{where}: invalid JSON: nested too deeply") from None
        if isinstance(data, dict):
            if "indices" not in data:
                raise ValueError(f"{where}: a JSON object needs an 'indices' list (it has {len(data)} other "
                                 f"key{'s' if len(data) != 1 else ''})")
            data = data["indices"]
        if not isinstance(data, list):
            raise ValueError(f"{where}: 'indices' must be a list of integers, got {_kind(data)}")
        values = data
    else:
        values = []
        for line_no, line in enumerate(stripped.splitlines(), start=1):
            for token in line.replace(",", " ").split():
                try:
                    values.append(int(token))
                except ValueError:
                    raise ValueError(f"{where}: entry {len(values)} (line {line_no}) is not an integer; expected "
                                     "a JSON list of integers, {\"indices\": [...]}, or integers separated by "
                                     "spaces, commas or new lines") from None
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{where}: entry {i} is {_kind(v)}, not an integer")
        out.append(v)
    if not out:
        raise ValueError(f"{where}: holds no index; at least one training-set index is needed")
    return out


def check_mask_indices(indices: list[int], pool: np.ndarray, n_train: int, source: str) -> list[int]:
    """``indices`` if every one is a distinct row of the training subset ``pool`` (of a training set of
    ``n_train`` rows); a ValueError naming ``source`` and the first bad entry otherwise."""
    where = f"{MASK_INDICES_FIELD} file {source!r}"
    in_pool = np.zeros(n_train, dtype=bool)
    in_pool[np.asarray(pool, dtype=np.int64)] = True
    seen: set[int] = set()
    for i, v in enumerate(indices):
        if not 0 <= v < n_train:
            raise ValueError(f"{where}: entry {i} is {v}, out of range; valid: 0..{n_train - 1} (rows of the "
                             "training set)")
        if not in_pool[v]:
            raise ValueError(f"{where}: entry {i} is {v}, a row that dataset.train4val holds out for validation; "
                             "valid: rows of the training subset")
        if v in seen:
            raise ValueError(f"{where}: entry {i} repeats index {v}; every index may appear once")
        seen.add(v)
    return list(indices)


@dataclass(frozen=True)
class LoaderSettings:
    """How the training, validation and test data are served (the run's ``dataset`` section)."""

    batch_size: int                       # the global training batch (split over the ranks)
    eval_batch_size: Optional[int] = None  # validation / test batches (default: batch_size)
    num_workers: int = 0
    train4val: bool = False               # hold out a stratified part of train as validation
    val_fraction: float = 0.2
    shuffle: bool = True                  # reshuffle the training set every epoch (seeded)
    kind: str = "classic"                 # "classic" DataLoaders or "device"-resident tensors


@dataclass(frozen=True)
class MaskDataSettings:
    """Which training rows are the mask data and how they are shown (the run's ``training.compressor``)."""

    batch_size: int = 1
    per_class_samples: Optional[int] = 10        # None: every row of the training subset
    indices: Optional[Sequence[int]] = None      # exactly these rows, in this order (replaces the draw)
    indices_source: str = "the mask-index list"  # where ``indices`` came from (for messages)
    transform: str = "eval"                      # "eval" or "train" (the training augmentation)
    order: str = "fixed"                         # "fixed" or "reshuffle" on every pass
    sampling: str = "seeded"                     # "seeded" or "unseeded" (fresh OS entropy)


@dataclass(frozen=True)
class Placement:
    """Where the loaders feed: the training device and this process's rank of ``world``."""

    device: Optional[torch.device] = None  # None: the CPU
    rank: int = 0
    world: int = 1


def build_loaders(splits: DataSplits, loading: LoaderSettings, mask: MaskDataSettings = MaskDataSettings(), *,
                  seed: int = 0, placement: Placement = Placement(), name: str = "this dataset") -> Loaders:
    """Build the four loaders of a run from a dataset's splits (see the module docstring); ``name`` (e.g.
    "dataset 'digits'") is how messages call the dataset.

    ``loading.kind="device"`` needs ``splits.device_data`` (uint8-backed datasets) and puts train / val / test
    on ``placement.device`` (no DataLoader is built for them).  With ``world`` > 1 ranks, ``batch_size`` is
    the global batch: this rank's training loader yields its ``batch_size / world`` slice of each
    (validation, test and mask data are not split).
    """
    batch_size, rank, world = loading.batch_size, placement.rank, placement.world
    if batch_size % world:
        raise ValueError(f"dataset.batch_size: the global batch {batch_size} does not split into {world} equal "
                         f"parts; use a multiple of {world}")
    if loading.kind not in LOADER_KINDS:
        raise ValueError(f"dataset.loader: invalid value {loading.kind!r}; valid: "
                         f"{', '.join(map(repr, LOADER_KINDS))}")
    targets = np.asarray(splits.train_targets)
    if loading.train4val:
        train_idx, val_idx = stratified_split(targets, loading.val_fraction, seed)
    else:
        train_idx = np.arange(len(targets))
    if mask.indices is not None:
        mask_idx = check_mask_indices(list(mask.indices), train_idx, len(targets), mask.indices_source)
    else:
        draw = seed if mask.sampling == "seeded" else secrets.randbits(63)  # "unseeded": the official code's
        mask_idx = mask_indices(targets, mask.per_class_samples, draw, pool=train_idx)
    eval_bs = loading.eval_batch_size or batch_size
    mask_source = splits.train if mask.transform == "train" else splits.train_eval
    mask_loader = DataLoader(Subset(mask_source, mask_idx), batch_size=mask.batch_size,
                             shuffle=mask.order == "reshuffle")
    if loading.kind == "device":
        train, val, test = _device_loaders(splits, targets, train_idx, batch_size, eval_bs, loading.train4val, seed,
                                           placement.device, name)
        train.shuffle = loading.shuffle
        train.shard(rank, world)
    else:
        if loading.train4val:
            train_set: Dataset = Subset(splits.train, train_idx.tolist())
            val_set: Dataset = Subset(splits.train_eval, val_idx.tolist())
        else:
            train_set, val_set = splits.train, splits.test
        pin = placement.device is not None and torch.device(placement.device).type == "cuda"
        common = dict(num_workers=loading.num_workers, pin_memory=pin, persistent_workers=False)
        gen = torch.Generator().manual_seed(derive_seed(seed, "workers", 0))
        sampler = EpochShuffler(len(train_set), seed, global_batch=batch_size, rank=rank, world=world,
                                shuffle=loading.shuffle)
        train = DataLoader(train_set, batch_size=batch_size // world, sampler=sampler, drop_last=False,
                           generator=gen, **common)
        val = DataLoader(val_set, batch_size=eval_bs, shuffle=False, **common)
        test = DataLoader(splits.test, batch_size=eval_bs, shuffle=False, **common)
    return Loaders(train=train, val=val, test=test, mask=mask_loader, num_classes=splits.num_classes,
                   input_shape=splits.input_shape, mask_indices=mask_idx, val_is_test=not loading.train4val,
                   seed=seed)


def smoke_eval_loaders(loaders: Loaders, max_batches: int) -> Loaders:
    """The loaders of a smoke run (``training.max_batches``): every validation and test pass reads the same
    ``max_batches`` batches' worth of samples, drawn at random with the run seed from the whole split (in
    their stored order), instead of the split's first batches: a test split stored class by class (image
    folders, CIFAR's JPEG trees) would otherwise be evaluated on one class.  Training passes are shuffled
    by their epoch seed already and keep their cap where they are read (:class:`engine.run.Capped`)."""
    test = _sampled(loaders.test, max_batches, derive_seed(loaders.seed, "smoke-test"))
    val = test if loaders.val is loaders.test else _sampled(loaders.val, max_batches,
                                                             derive_seed(loaders.seed, "smoke-val"))
    return dataclasses.replace(loaders, val=val, test=test)


def _sampled(loader: AnyLoader, max_batches: int, seed: int) -> AnyLoader:
    n, batch = len(loader.dataset), loader.batch_size
    k = min(n, max_batches * batch)
    if k >= n:
        return loader
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    if isinstance(loader, DeviceLoader):
        sub = copy.copy(loader)
        where = loader.images.device
        sub.images, sub.targets, sub.dataset = loader.images[idx.to(where)], loader.targets[idx.to(where)], range(k)
        return sub
    return DataLoader(Subset(loader.dataset, idx.tolist()), batch_size=batch, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, persistent_workers=False)


def _device_loaders(splits: DataSplits, targets: np.ndarray, train_idx: np.ndarray, batch_size: int, eval_bs: int,
                    train4val: bool, seed: int, device: Optional[torch.device],
                    dataset_name: str) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    if splits.device_data is None:
        raise ValueError(f"dataset.loader 'device' is not supported by {dataset_name}: it needs a dataset that "
                         "can be held as uint8 tensors with crop/flip augmentation (cifar10, cifar100, "
                         "tinyimagenet, imagefolder with augment 'cifar' or 'none'); use dataset.loader 'classic'")
    dd = splits.device_data()
    if not np.array_equal(dd.train_targets.numpy(), targets):
        raise RuntimeError(f"{dataset_name}: device data labels differ from the dataset's training labels")
    device = torch.device("cpu") if device is None else torch.device(device)
    common = dict(device=device, mean=dd.mean, std=dd.std)
    train_x, train_y = dd.train_images, dd.train_targets
    if train4val:  # (without it the training set is the whole of train: no copy)
        idx = torch.from_numpy(np.asarray(train_idx, dtype=np.int64))
        train_x, train_y = train_x[idx], train_y[idx]
    train = DeviceLoader(train_x, train_y, batch_size=batch_size, train=True, seed=seed, padding=dd.padding,
                         flip=dd.flip, **common)
    test = DeviceLoader(dd.test_images, dd.test_targets, batch_size=eval_bs, train=False, **common)
    if train4val:
        keep = np.zeros(len(targets), dtype=bool)
        keep[train_idx] = True
        held = torch.from_numpy(np.flatnonzero(~keep))
        val = DeviceLoader(dd.train_images[held], dd.train_targets[held], batch_size=eval_bs, train=False, **common)
    else:
        val = test
    return train, val, test
