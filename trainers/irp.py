"""Iterative rewind pruning (experiment ``irp``), as used by AutoSparse (arXiv 2408.14757) to label weights.

Lottery-ticket style::

    theta0 (initial weights, after the BN warm-up) -> for i = 1..N:
        train ``epochs_per_iteration`` epochs with the current mask (optimizer and schedule restarted)
        -> rank the remaining weights with ``training.compressor`` (e.g. magnitude of the trained weights;
           any registered criterion, data-dependent ones on the mask data, through the score cache)
        -> prune to density d^(i/N) (``schedule: geometric``; ``equal`` removes the same count each
           iteration), d = 1 - ``training.compressor.sparsity``, global or per-layer (``compressor.mask``)
        -> rewind: surviving weights back to theta0 (or, with ``rewind_epoch`` k > 0, to the weights after
           k epochs of the first iteration); pruned weights are exactly zero
    -> train the final sparse network ``final_epochs`` epochs and test it.

Only the prunable weights are masked.  With ``reset_non_prunable: true`` (default) *everything else*
is rewound too (BN parameters and statistics, biases, unpruned layers); with ``false`` it keeps training.

``order: prune_first`` is the loop of AutoSparse's code (``run_tools/runner_prune.py``): the first pruning
step ranks theta0 itself, before any training; then N-1 times train -> prune -> rewind, and the final
training is the N-th (N trainings in all, against N + 1 with the default ``train_first``).

``grad_feature`` chooses the feature g0 written to ``autos_dataset.pt``: ``mask_mean`` (default) the mean
mask-data gradient ``(1/B) sum_b grad L_b(theta0)``; ``train_sum`` AutoSparse's code (``init_p_grad``): the
*sum* ``sum_b grad L_b(theta0)`` over the batches of one pass over the augmented training set (model in
eval mode, ``L_b`` the batch-mean cross-entropy, ``grad_batch_size`` samples per batch).

The *surviving score* of a weight counts the pruning steps it survived (0..N).  At the end the
AutoSparse training set ``autos_dataset.pt`` (:mod:`autosparse.dataset`) is written: per prunable tensor
theta0, the mean mask-data gradient g0 at theta0 (eval mode) and the surviving score.  ``iterations.json``
/ ``.csv`` record per iteration the density trained at, the test accuracy, the density after pruning and
the per-layer densities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

import compressors
from autosparse.dataset import build_dataset, save_dataset
from compressors.base import preserved_state
from compressors.estimators import mean_gradient
from engine import Call, Experiment, Prune, PruneSettings, Rewind, Snapshot, Train, Warmup
from trainers import register
from utils.schema import Problem, option
from utils.seeding import derive_seed

AUTOS_DATASET = "autos_dataset.pt"


@dataclass
class IRPOptions:
    """Options of the ``irp`` experiment (``training.irp``)."""

    iterations: int = option(20, "pruning iterations N; after iteration i the density is d^(i/N) (d = 1 - "
                                 "training.compressor.sparsity)", min=1, max=10000)
    epochs_per_iteration: Optional[int] = option(None, "training epochs before each pruning step (default: "
                                                       "training.num_steps)", min=1)
    final_epochs: Optional[int] = option(None, "epochs training the final rewound sparse network after the last "
                                               "pruning step (default: epochs_per_iteration; 0 skips it)", min=0)
    schedule: Literal["geometric", "equal"] = option(
        "geometric", "'geometric': density d^(i/N) after iteration i; 'equal': the same number of weights "
                     "removed every iteration")
    rewind_epoch: int = option(0, "rewind the surviving weights to theta0 (0) or to the weights after this many "
                                  "epochs of the first iteration (<= epochs_per_iteration)", min=0)
    reset_non_prunable: bool = option(True, "also reset BN parameters and running statistics, biases and the "
                                            "unpruned layers to the rewind point (false: they keep training)")
    autos_dataset: bool = option(True, "write the AutoSparse training set autos_dataset.pt in the run folder")
    order: Literal["train_first", "prune_first"] = option(
        "train_first", "'train_first': every iteration trains, then prunes and rewinds (then the final training); "
                       "'prune_first': AutoSparse's code, the first pruning step ranks theta0 before any training, "
                       "then N-1 x (train, prune, rewind) and the final training")
    grad_feature: Literal["mask_mean", "train_sum"] = option(
        "mask_mean", "the AutoSparse feature g0 at theta0: 'mask_mean' the mean mask-data gradient (eval transform); "
                     "'train_sum' AutoSparse's code, the sum of the batch gradients over one pass of the augmented "
                     "training set (model in eval mode)")
    grad_batch_size: Optional[int] = option(None, "grad_feature 'train_sum': samples per batch of that pass "
                                                  "(AutoSparse's code: 256; default: dataset.batch_size)", min=1)


def start(run, features: bool, grad_feature: str, grad_batch_size: int) -> None:
    """Surviving-score counters, and the AutoSparse features g0 at theta0 (``grad_feature``, see the module
    docstring; ``grad_batch_size``: the batches of ``train_sum``)."""
    extra = run.state.extra
    extra["survivors"] = {n: torch.zeros(m.shape, dtype=torch.int16) for n, m in run.masks.items()}
    extra["grad0"] = None
    if features:
        with preserved_state(run.model):
            if grad_feature == "train_sum":
                g = training_set_gradient_sum(run, grad_batch_size)
            else:
                g = mean_gradient(run.model, list(run.masks), run.loaders.mask, nn.CrossEntropyLoss())
        extra["grad0"] = {n: v.detach().cpu() for n, v in g.items()}


def training_set_gradient_sum(run, batch_size: int) -> dict[str, torch.Tensor]:
    """AutoSparse's gradient feature: ``g0 = sum_b grad_theta L_b(theta0)``, L_b the mean cross-entropy of batch b,
    over one pass of the *augmented* training set (the training transform) in batches of ``batch_size``
    (``grad_batch_size``, default ``dataset.batch_size``), model in eval mode.  The augmentation draws come from a
    generator seeded by the run seed, inside a forked RNG, so the training stream that follows is unchanged;
    the batches are in stored order and not split across ranks (every rank computes the same sum)."""
    loader = run.loaders.train
    if isinstance(loader, DataLoader):
        loader = DataLoader(loader.dataset, batch_size=batch_size, shuffle=False,
                            num_workers=loader.num_workers)
    elif run.rank.distributed:
        raise ValueError("training.irp.grad_feature 'train_sum' with dataset.loader 'device' runs on one rank only; "
                         "use dataset.loader 'classic' for several ranks")
    else:
        run.loaders.set_epoch(0)
    params = dict(run.model.named_parameters())
    targets = [params[n] for n in run.masks]
    total = [torch.zeros_like(p) for p in targets]
    loss_fn = nn.CrossEntropyLoss()
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(run.seed, "autos-grad0"))
        run.model.eval()
        for x, y in run.capped(loader):
            loss = loss_fn(run.model(x.to(run.device)), y.to(run.device))
            torch._foreach_add_(total, [g.detach() for g in torch.autograd.grad(loss, targets)])
    return dict(zip(run.masks, total))


def untrained(run) -> None:
    """``order: prune_first``: the first pruning step comes before any training."""
    run.state.extra["trained"] = {"trained_density": None, "test_acc": None, "test_loss": None}


def test_trained(run) -> None:
    test = run.test()
    run.state.extra["trained"] = {"trained_density": run.density(), "test_acc": test["acc"], "test_loss": test["loss"]}


def count_survivors(run) -> None:
    for n, m in run.masks.items():
        run.state.extra["survivors"][n] += m.to("cpu", torch.int16)


def record(run, iteration) -> None:
    row = {"iteration": iteration, **run.state.extra["trained"], "density": run.density(),
           "layer_density": compressors.density(run.masks)}
    run.record(row)
    trained = (f"trained at density {row['trained_density']:.4f} test_acc {row['test_acc']:.4f}"
               if row["trained_density"] is not None else "untrained (theta0)")
    run.log(f"  iteration {iteration}: {trained} -> density {row['density']:.4f}")


@register("irp")
class IterativeRewindPruning(Experiment):
    """Experiment ``irp`` (see the module docstring)."""

    Options = IRPOptions
    section = "irp"
    supports_ablation = False  # many pruning steps: a shuffled or inverted mask would bring weights back
    supports_structure = False  # structured masks are chosen once

    @classmethod
    def check_config(cls, cfg, options, problems) -> None:
        comp = cfg.training.compressor
        if not compressors.get(comp.name).prunes:
            problems.append(Problem("training.compressor.class", f"irp ranks weights with a pruning criterion; "
                                    f"'{comp.name}' prunes nothing (e.g. 'magnitude', the lottery-ticket choice)"))
        epi = options.epochs_per_iteration or cfg.training.num_steps
        if epi < 1:
            problems.append(Problem("training.irp.epochs_per_iteration", "must be >= 1 (or set training.num_steps)"))
        elif options.rewind_epoch > epi:
            problems.append(Problem("training.irp.rewind_epoch", f"{options.rewind_epoch} is beyond the first "
                                    f"iteration's {epi} epochs; valid: 0..{epi}"))
        if options.order == "prune_first" and options.rewind_epoch > 0:
            problems.append(Problem("training.irp.rewind_epoch", "order 'prune_first' rewinds to theta0 (its first "
                                    "pruning step comes before any training); valid: 0, or order 'train_first'"))
        if options.grad_batch_size is not None and options.grad_feature != "train_sum":
            problems.append(Problem("training.irp.grad_batch_size", "is used only with grad_feature 'train_sum'; "
                                    "valid: null, or set grad_feature 'train_sum'"))
        if options.grad_batch_size is not None and cfg.dataset.loader == "device":
            problems.append(Problem("training.irp.grad_batch_size", "dataset.loader 'device' passes over the "
                                    "training set in its own batches (dataset.batch_size); valid: null, or "
                                    "dataset.loader 'classic'"))

    def schedule(self) -> list[float]:
        o = self.options
        return compressors.sparsity_schedule(self.cfg.training.compressor.sparsity, o.iterations, o.schedule)

    def stages(self, run):
        o, comp = self.options, self.cfg.training.compressor
        epi = o.epochs_per_iteration or self.cfg.training.num_steps
        final = epi if o.final_epochs is None else o.final_epochs
        grad = {"features": o.autos_dataset, "grad_feature": o.grad_feature,
                "grad_batch_size": o.grad_batch_size or self.cfg.dataset.batch_size}
        stages = [Warmup(comp.warmup, comp.warmup_mode), Snapshot("theta0"), Call(start, "start", kwargs=grad)]
        prune = PruneSettings.of(comp)
        schedule = self.schedule()
        if o.order == "prune_first":
            stages += [Call(untrained), Prune(prune.at(schedule[0]), seed=("scoring", 0)), Call(count_survivors),
                       Call(record, "record", kwargs={"iteration": 1})]
            for i, sparsity in enumerate(schedule[1:], start=1):
                stages += [Train(until=i * epi, label=i), Call(test_trained, "test"),
                           Prune(prune.at(sparsity), seed=("scoring", i)), Call(count_survivors),
                           Rewind("theta0", o.reset_non_prunable), Call(record, "record", kwargs={"iteration": i + 1})]
            return stages + self.final_stages((o.iterations - 1) * epi + final, o.iterations)
        for i, sparsity in enumerate(schedule):
            begin = i * epi
            if i == 0 and o.rewind_epoch > 0:  # the rewind point lies inside the first iteration
                stages += [Train(until=o.rewind_epoch, schedule_epochs=epi, validate_last=False, label=1),
                           Snapshot("rewind"), Train(until=epi, new_optimizer=False, epochs_from=0, label=1)]
            else:
                stages.append(Train(until=begin + epi, label=i + 1))
            stages += [Call(test_trained, "test"), Prune(prune.at(sparsity), seed=("scoring", i)),
                       Call(count_survivors), Rewind("rewind" if o.rewind_epoch > 0 else "theta0",
                                                     o.reset_non_prunable),
                       Call(record, "record", kwargs={"iteration": i + 1})]
        return stages + self.final_stages(o.iterations * epi + final, o.iterations + 1)

    def final_stages(self, until: int, label: int) -> list:
        """Train the final ticket to epoch ``until``, test it, and write the AutoSparse training set."""
        stages = [Train(until=until, track_best=True, label=label), Call(test_trained, "test"),
                  Call(record, "record", kwargs={"iteration": "final"})]
        if self.options.autos_dataset:
            stages.append(Call(self.write_autos_dataset, "write the AutoSparse training set"))
        return stages

    def write_autos_dataset(self, run) -> None:
        cfg, o, extra = self.cfg, self.options, run.state.extra
        names = list(run.masks)
        theta0 = {n: run.state.snapshots["theta0"][n] for n in names}
        ds = build_dataset(names, theta0, extra["grad0"], extra["survivors"], iterations=o.iterations,
                           schedule=o.schedule, target_sparsity=cfg.training.compressor.sparsity,
                           criterion=run.criterion.name, mask=cfg.training.compressor.mask, model=cfg.model.name,
                           dataset=cfg.dataset.name, seed=cfg.general.seed, rewind_epoch=o.rewind_epoch,
                           order=o.order, grad_feature=o.grad_feature)
        save_dataset(run.folder.file(AUTOS_DATASET), ds)

    def results(self, run):
        out = {"iterations": run.state.records, "irp_sparsity_schedule": self.schedule()}
        if self.options.autos_dataset:
            out["autos_dataset"] = str(run.folder.file(AUTOS_DATASET))
        return out
