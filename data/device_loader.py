"""Device-resident loader (``dataset.loader: "device"``) for small-image datasets.

The whole dataset lives on the training device as uint8 (N, C, H, W); every batch is gathered, randomly
cropped after zero padding, flipped and normalised there, in a few batched tensor operations.  The
augmentation distribution is the torchvision pipeline's (``RandomCrop(H, padding=p)`` with zero fill:
offsets uniform in 0..2p per axis; ``RandomHorizontalFlip``: probability 1/2; ``ToTensor`` +
``Normalize``), and for the same offsets and flip the output equals it exactly.

Shuffling uses the same per-epoch permutation as the classic loader's :class:`data.loaders.EpochShuffler`
(seeded by (seed, epoch)), and the augmentation draws come from a generator seeded by (seed, epoch), so
``set_epoch(e)`` fixes an epoch's batches completely and a resumed run sees the batches an uninterrupted
one would.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from utils.distributed import shard
from utils.seeding import derive_seed, epoch_permutation
from utils.threads import single_thread_on_cpu


def augment_batch(images: torch.Tensor, offsets: Optional[torch.Tensor], flips: Optional[torch.Tensor],
                  padding: int) -> torch.Tensor:
    """Crop-with-padding and flip a uint8 batch (B, C, H, W).

    ``offsets`` (B, 2) are the (top, left) crop corners in the zero-padded image (0..2*padding), ``flips``
    (B,) booleans; None means no crop / no flip.  The crops are read from a sliding-window view of the
    padded batch (one indexed copy), the flips with one ``where``.
    """
    b, c, h, w = images.shape
    out = images
    if offsets is not None and padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
        out = windows[torch.arange(b, device=images.device), :, offsets[:, 0], offsets[:, 1]]
    if flips is not None:
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


class DeviceLoader:
    """Iterates (images, labels) batches of a uint8 tensor dataset held on ``device``.

    ``train=True``: shuffled per epoch and augmented (see the module docstring); otherwise in order and
    only normalised.  ``len()`` is the number of batches; ``dataset`` has the sample count as ``len()``.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int, device: torch.device,
                 mean: Sequence[float], std: Sequence[float], train: bool, seed: int = 0, padding: int = 0,
                 flip: bool = False, drop_last: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"DeviceLoader needs uint8 images shaped (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.targets = targets.to(self.device, dtype=torch.int64)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.padding, self.flip, self.drop_last = padding, flip, drop_last
        c = images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).reshape(1, c, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).reshape(1, c, 1, 1)
        self.epoch, self.start_batch = 0, 0
        self.rank, self.world, self.global_batch = 0, 1, batch_size
        self.shuffle = True  # train=True: False keeps the stored order every epoch (augmentation still drawn)
        self.dataset = range(len(self.targets))  # len(loader.dataset) like a DataLoader

    def shard(self, rank: int, world: int) -> None:
        """Yield only this rank's slice of every global batch (``batch_size`` becomes the per-rank size)."""
        self.rank, self.world = rank, world
        self.batch_size = self.global_batch // world

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the order and the augmentation of epoch ``epoch``; iteration starts at batch ``start_batch``
        (a run resumed inside an epoch sees the batches an uninterrupted one would)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = len(self.order()) if self.world > 1 else len(self.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        """This epoch's sample order (the classic loader's permutation for training)."""
        n = len(self.targets)
        if not self.train:
            return torch.arange(n)
        perm = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        return shard(perm, self.global_batch, self.rank, self.world)

    def _draws(self, n: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Crop offsets and flips of every sample of this epoch (drawn on the CPU, then moved: the
        same numbers on every device type)."""
        if not self.train or (self.padding == 0 and not self.flip):
            return None, None
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "device-augment", self.epoch))
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen) if self.padding > 0 else None
        flips = torch.rand(n, generator=gen) < 0.5 if self.flip else None
        return (None if offsets is None else offsets.to(self.device),
                None if flips is None else flips.to(self.device))

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 -> float, ``(x / 255 - mean) / std`` (the operations of ToTensor + Normalize)."""
        return batch.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with single_thread_on_cpu(self.device):
            order = self.order().to(self.device)
            n = len(order)
            offsets, flips = self._draws(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(self.start_batch * self.batch_size, stop, self.batch_size):
            with single_thread_on_cpu(self.device):
                idx = order[start:start + self.batch_size]
                batch = self.images.index_select(0, idx)
                if offsets is not None or flips is not None:
                    sl = slice(start, start + len(idx))
                    batch = augment_batch(batch, None if offsets is None else offsets[sl],
                                          None if flips is None else flips[sl], self.padding)
                out = self.normalise(batch), self.targets.index_select(0, idx)
            yield out

