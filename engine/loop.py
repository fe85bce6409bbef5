"""The shared training loop's pieces: mask enforcement, mixed precision, memory format and compilation,
training over a run of batches, evaluation, BN-statistics warmup."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Optional

import numpy as np
import torch
from torch import nn

from utils.progress import progress
from utils.threads import single_thread_on_cpu


class TrainingDiverged(RuntimeError):
    """Training diverged: the loss became NaN or infinite within an epoch (:func:`train_epoch`), or at the end
    of an epoch a weight or BN statistic is not finite or the loss exploded (:func:`engine.hooks.check_divergence`).
    The message names the epoch and the tensor; the runner records the run ``failed`` with it."""


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str = "none") -> ContextManager[Any]:
    """``torch.autocast`` to bfloat16 / float16 on ``device`` for ``amp`` in bf16 / fp16; a null context for
    "none".  CPU autocast is used on the CPU (correct, rarely faster)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"training.amp: invalid value {amp!r}; valid: {', '.join(map(repr, AMP_DTYPES))}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: str) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for fp16 (its state belongs in checkpoints); None otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False, compile: bool = False,
                  log: Callable[[str], None] = print) -> nn.Module:
    """Put ``model`` in channels_last format (in place) and return the module to train / evaluate with:
    ``torch.compile(model)`` when ``compile`` is set on CUDA (the compiled wrapper shares the parameters,
    so ``model.state_dict()`` keeps its plain keys), else ``model`` itself.  On the CPU compile is ignored
    with a notice."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        if device.type == "cuda":
            return torch.compile(model)  # type: ignore[return-value]
        log("  training.compile is ignored on the CPU (CUDA only)")
    return model


def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class MaskEnforcer:
    """Keeps pruned weights exactly zero: masks gradients before the step (so momentum / Adam state of
    pruned weights stays zero) and re-applies the mask to the weights after it (so weight decay or any
    optimizer cannot revive them).  Both are single fused ``torch._foreach_mul_`` calls (on the CPU run in
    one thread, see :func:`_one_thread_on_cpu`)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.names = [n for n in masks if n in params]
        self.params = [params[n] for n in self.names]
        # masks take each parameter's dtype, device and memory format (e.g. channels_last)
        self.masks = [torch.empty_like(params[n]).copy_(masks[n]) for n in self.names]
        self.device = self.params[0].device if self.params else torch.device("cpu")

    def __bool__(self) -> bool:
        return bool(self.params)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self.params:
            with single_thread_on_cpu(self.device):
                torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            with single_thread_on_cpu(self.device):
                torch._foreach_mul_(list(grads), list(masks))


@dataclass
class EpochStats:
    """Mean training loss and accuracy over ``samples`` samples seen in ``seconds``."""

    loss: float
    acc: float
    seconds: float
    images_per_s: float
    samples: int = 0


def train_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, enforcer: MaskEnforcer | None = None, grad_clip: float | None = None,
                desc: str = "train", *, amp: str = "none", scaler: Optional[torch.amp.GradScaler] = None,
                channels_last: bool = False, total: int | None = None) -> EpochStats:
    """One pass over ``loader`` (an epoch, or the ``total`` batches of one the caller cut out) with the mask
    enforced after every step.

    ``amp`` autocasts the forward pass (bf16 / fp16); with a ``scaler`` (fp16) the loss is scaled, the
    gradients are unscaled before clipping and steps with inf/NaN gradients are skipped by the scaler.
    The mask is applied to the gradients before the step and to the weights after it, so pruned weights
    stay exactly zero.  A progress bar (a line every 30 s off a terminal: :mod:`utils.progress`) shows
    loss, accuracy, images/s and the ETA; on CUDA the host synchronises with
    the device only when the bar refreshes (about once a second) and at the end of the epoch.
    """
    model.train()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    nonfinite = torch.zeros((), device=device, dtype=torch.bool)
    sync_every_step = device.type != "cuda"
    seen = 0
    tic = last = time.perf_counter()
    bar = progress(loader, desc=desc, total=total, unit="batch")

    def check_finite() -> None:
        if bool(nonfinite):
            raise TrainingDiverged(f"{desc}: the training loss became NaN or infinite within the first {seen} "
                                   "samples of this epoch")

    for x, y in bar:
        x, y = _to_input(x, device, channels_last), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model(x)
            loss = loss_fn(out, y)
        nonfinite |= ~torch.isfinite(loss.detach())
        if sync_every_step:
            check_finite()
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if enforcer:
            enforcer.apply_to_grads()
        if grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if enforcer:
            enforcer.apply_to_weights()
        n = y.shape[0]
        seen += n
        total_loss += loss.detach().double() * n
        correct += (out.detach().argmax(1) == y).sum()
        now = time.perf_counter()
        if now - last >= 1.0:
            last = now
            check_finite()
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / (now - tic):,.0f}", refresh=False)
    check_finite()
    loss_value, acc_value = total_loss.item() / max(seen, 1), correct.item() / max(seen, 1)
    seconds = time.perf_counter() - tic
    return EpochStats(loss=loss_value, acc=acc_value, seconds=seconds,
                      images_per_s=seen / seconds if seconds > 0 else float("nan"), samples=seen)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: nn.Module, device: torch.device,
             num_classes: int, *, amp: str = "none", channels_last: bool = False) -> dict[str, float]:
    """Loss, accuracy and macro precision / recall / F1 (classes absent from both labels and predictions
    are left out, as scikit-learn does; zero_division=0).  ``amp`` / ``channels_last`` as in training."""
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = _to_input(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)
            batch_loss = loss_fn(out, y)
        total_loss += batch_loss.double() * y.shape[0]
        seen += y.shape[0]
        pred = out.argmax(1)
        conf += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    c = conf.cpu().numpy().astype(np.float64)
    tp = np.diag(c)
    support, predicted = c.sum(1), c.sum(0)
    present = (support + predicted) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "loss": total_loss.item() / max(seen, 1),
        "acc": float(tp.sum() / max(seen, 1)),
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


@torch.no_grad()
def bn_warmup(model: nn.Module, loader: Iterable, passes: int, device: torch.device) -> None:
    """``passes`` train-mode forward passes over ``loader`` without gradients: only BN running
    statistics change (weights untouched; train/eval mode restored)."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for p in range(passes):
        for x, _ in progress(loader, desc=f"BN warmup {p + 1}/{passes}", unit="batch"):
            model(x.to(device, non_blocking=True))
    for m, mode in modes.items():
        m.training = mode
