"""The experiment config: typed dataclasses mirroring the official repository's JSON layout.

These are the sections every run has.  An experiment's own options (``training.irp``, ``training.pat``,
...) are declared by the experiment class (its ``Options`` and ``section``) and parsed by
:class:`runspec.RunSpec`, which also checks the names against the registries.  Fields marked
``identity=False`` never change what a run computes and are not part of its identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from compressors.structures import parse_kinds
from utils.io import UnreadableJSON, read_json
from utils.schema import ConfigError, Problem, option, parse_collect
from utils.seeding import MAX_SEED


@dataclass
class GPUConfig:
    ngpus: int = option(1, "number of GPUs to use; 0 runs on the CPU", min=0)
    gpu_id: int = option(0, "CUDA device index used when ngpus >= 1", min=0)


@dataclass
class KeepConfig:
    checkpoint: Literal["last", "none"] = option(
        "last", "checkpoint.pt once the run is completed: 'last' keeps it (the default, as before: a completed run "
                "whose mask, final model, config or results file is damaged is rebuilt from it without training); "
                "'none' deletes it as soon as status.json says completed (results.json, final_model.pt and mask.pt "
                "are written by then), giving up that repair (such a run is rerun with --force) and the "
                "best-validation weights and optimizer state it holds; docs/run-folder.md")


# the package each tracker of general.trackers needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass
class GeneralConfig:
    id: str = option("", "experiment name shown in summaries (default: the config file's name)", identity=False)
    experiment: str = option("pbt", "registered trainer (pipeline); 'pbt' = prune before training")
    seed: int = option(0, "run seed: model init, data order, mask-data sampling", min=0,
                       max=MAX_SEED)
    output_dir: Optional[str] = option(None, "results root for this config (the --results flag overrides it)",
                                       identity=False)
    gpu: GPUConfig = option(factory=GPUConfig, help="device selection", identity=False)
    description: str = option("", "free text, not used", identity=False)
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True) (slower on GPU)")
    compat: Literal["paper", "official"] = option(
        "paper", "'paper': the methods' papers (this project's corrected behaviour); 'official': every behaviour of "
                 "the official second-order PaI code at once (docs/reproducing.md, 'Differences from the official "
                 "code'); each "
                 "switch left null follows it, and the resolved config records the concrete values",
        identity=False)
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = option(
        factory=lambda: ["tensorboard"], identity=False,
        help="experiment trackers fed every epoch: TensorBoard event files in the run folder (default); 'wandb' "
             "(offline mode, in the run folder) and 'mlflow' (file store <results>/mlruns) need their packages")
    keep: KeepConfig = option(factory=KeepConfig, identity=False,
                              help="which files a completed run keeps (disk use; never changes a result)")


@dataclass
class DatasetConfig:
    name: str = option("digits", "registered dataset", key="class")
    root: str = option("./datasets", "folder where datasets are stored / downloaded (relative to the working "
                                     "directory); while it is the default ./datasets, the PAI_DATASETS environment "
                                     "variable, when set, replaces it; any other value wins over the variable",
                       identity=False)
    download: bool = option(True, "download the dataset when it is missing (where the dataset supports it)",
                            identity=False)
    batch_size: int = option(128, "training batch size", min=1)
    eval_batch_size: Optional[int] = option(None, "batch size for validation/test (default: batch_size)", min=1)
    num_workers: int = option(0, "DataLoader worker processes", min=0, identity=False)
    train4val: bool = option(False, "hold out a seeded, stratified part of train as validation (else validate on test)")
    val_fraction: float = option(0.2, "fraction of train held out when train4val is true", min=0, max=1,
                                 min_exclusive=True, max_exclusive=True)
    loader: Literal["classic", "device"] = option(
        "classic", "'classic': torch DataLoader over the torchvision pipeline; 'device': the whole uint8 dataset "
                   "on the training device, crop/flip/normalise batched there (cifar10, cifar100, tinyimagenet, "
                   "imagefolder with augment cifar/none)")
    normalization: Optional[Literal["measured", "official"]] = option(
        None, "input normalisation constants: 'measured' (this project's, measured on the training set; CIFAR-10 std "
              "(0.2470, 0.2435, 0.2616)) or 'official' (the official code's, e.g. CIFAR-10 std (0.2023, 0.1994, "
              "0.2010); cifar10, cifar100, tinyimagenet); null: as general.compat says ('official' where the dataset "
              "has official constants); dataset.options mean/std win over both")
    shuffle: Optional[bool] = option(
        None, "reshuffle the training set every epoch (seeded); false: the stored order every epoch, as the official "
              "CIFAR loaders; null: as general.compat says")
    options: dict[str, Any] = option(factory=dict, help="dataset-specific options (see the dataset's docs)")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {
        "normalization": {"paper": "measured", "official": "official"},
        "shuffle": {"paper": True, "official": False},
    }


@dataclass
class ModelConfig:
    name: str = option("digits_cnn", "registered model", key="class")
    num_classes: Optional[int] = option(None, "output classes (default: from the dataset)", min=1)
    options: dict[str, Any] = option(factory=dict, help="model-specific keyword arguments")
    pooling: Optional[Literal["adaptive", "official"]] = option(
        None, "global pooling of the models that take a 'pooling' option (the CIFAR and TinyImageNet ResNets of "
              "models/resnet.py): 'adaptive' (nn.AdaptiveAvgPool2d(1)) or 'official' (F.avg_pool2d over the whole "
              "final map, the official code's F.avg_pool2d(out, 4) at 32x32: logits differ by up to 3e-7, training "
              "trajectories part after a few steps); for other models, which have one pooling, it resolves to "
              "'adaptive'; null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {"pooling": {"paper": "adaptive", "official": "official"}}


@dataclass
class LossKwargs:
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", min=0, max=1, max_exclusive=True)


@dataclass
class LossConfig:
    name: Literal["CE"] = option("CE", "training loss: CE (cross-entropy)", key="class")
    kwargs: LossKwargs = option(factory=LossKwargs, help="loss options")


@dataclass
class OptimizerKwargs:
    momentum: float = option(0.9, "SGD momentum", min=0, max=1, max_exclusive=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    w_decay: float = option(0.0, "weight decay (L2 for SGD, decoupled for AdamW)", min=0)
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="Adam betas", min=0, max=1,
                                max_exclusive=True)
    scheduler: Literal["none", "step", "cosine"] = option("none", "learning-rate schedule per epoch")
    lr_drops: list[int] = option(factory=list, help="epochs at which 'step' multiplies the lr by lr_drop_factor",
                                 min=1)
    lr_drop_factor: float = option(0.1, "multiplier of the 'step' schedule", min=0, max=1, min_exclusive=True)
    warmup_epochs: int = option(0, "linear learning-rate warm-up epochs before the schedule", min=0)

    def check(self, path: str, problems: list[Problem]) -> None:
        if self.lr_drops != sorted(set(self.lr_drops)):
            problems.append(Problem(f"{path}.lr_drops", f"must be strictly increasing, got {self.lr_drops}"))
        if len(self.betas) != 2:
            problems.append(Problem(f"{path}.betas", f"expected two numbers, got {self.betas}"))


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adamw", "adam"] = option("sgd", "optimizer", key="class")
    learning_rate: float = option(0.1, "initial learning rate", min=0, min_exclusive=True)
    kwargs: OptimizerKwargs = option(factory=OptimizerKwargs, help="optimizer and schedule options")


@dataclass
class CompressorConfig:
    name: str = option("none", "registered pruning criterion ('none' = dense)", key="class")
    mask: Literal["global", "layer"] = option("global", "one threshold over all prunable weights, or per tensor")
    sparsity: float = option(0.0, "fraction of prunable weights removed; give it, density or compression (one of "
                                  "the three)", min=0, max=1, max_exclusive=True)
    density: Optional[float] = option(
        None, "the sparsity given as the fraction of prunable weights kept (sparsity = 1 - density; Synaptic-Flow, "
              "NTK-SAP, PHEW and FORCE quote this); resolved into sparsity, docs/configs.md#sparsity-density-or-"
              "compression", min=0, max=1, min_exclusive=True, identity=False)
    compression: Optional[float] = option(
        None, "the sparsity given as the compression ratio 1 / density (sparsity = 1 - 1/compression; Vysogorets & "
              "Kempe quote 10^c); resolved into sparsity", min=1, identity=False)
    sparsity_form: Literal["sparsity", "density", "compression"] = option(
        "sparsity", "the form the sparsity was given in, for report labels (set when density or compression is "
                    "given; never changes a result)", identity=False)
    reprune_disconnected: bool = option(
        False, "effective sparsity (Vysogorets & Kempe 2023): remove kept weights cut off from the input or the "
               "output and re-fill the budget from the next best scores until the effective sparsity meets the "
               "target (their binary search); docs/run-folder.md#effective-sparsity")
    min_layer_density: Optional[float] = option(
        None, "after selection, every prunable tensor keeps at least this fraction of its weights (its top-scored "
              "ones), the budget taken from the globally lowest kept elsewhere (exact total; global mask only); "
              "null: no minimum", min=0, max=1, min_exclusive=True)
    warmup: int = option(0, "BN-statistics passes over the training data before scoring", min=0)
    batch_size: int = option(1, "mask-data batch size", min=1)
    per_class_samples: Optional[int] = option(10, "mask-data samples drawn per class from the training set; null: "
                                                  "every sample of the training subset (after train4val)", min=1)
    mask_indices: Optional[str] = option(None, "file of training-set row indices used as the mask data, exactly and "
                                               "in this order (JSON list, {\"indices\": [...]} as a run folder's "
                                               "mask_indices.json, or integers separated by spaces/commas/lines; "
                                               "relative to the working directory); replaces per_class_samples")
    prune_classifier: bool = option(False, "also prune the final Linear layer's weight")
    prune_biases: bool = option(False, "also prune biases of Conv/Linear layers")
    ablation: Literal["none", "shuffle", "reinit", "invert"] = option(
        "none", "sanity checks of Frankle et al. (ICLR 2021): 'shuffle' permutes each layer's mask at random "
                "(same density), 'reinit' re-draws the kept weights from the initial distribution, 'invert' keeps "
                "the lowest scores; seeded from the run seed")
    structure: str = option(
        "none", "structured pruning: 'none' (single weights), 'channel' (conv output channels with their BN channel, "
                "the next layers' input channels and residual-coupled channels), 'neuron' (hidden Linear units), "
                "'head' (attention heads), or a '+'-joined combination such as 'head+neuron'; sparsity is then the "
                "fraction of structures removed")
    aggregate: Literal["sum", "mean", "l2", "max"] = option(
        "sum", "structured pruning: how a structure's score combines the element scores of the weights it removes")
    structure_norm: Literal["none", "layer"] = option(
        "none", "structured pruning: 'layer' divides each layer's structure scores by their absolute sum before a "
                "global ranking; 'none' ranks them as aggregated")
    prunable: Optional[Literal["module_type", "official_names"]] = option(
        None, "which tensors are prunable: 'module_type' (Conv/Linear weights, see prune_classifier / prune_biases) or "
              "'official_names' (the official code's rule: every parameter whose official name contains none of "
              "'bias', 'linear', 'bn', 'fc'; prunes ResNet shortcut-BN scales); null: as general.compat says")
    kept_count: Optional[Literal["round", "floor"]] = option(
        None, "kept entries: 'round' (round((1-s)·n), ties to the lower index) or 'floor' (the official "
              "max(1, floor((1-s)·n)) chosen by torch.topk); null: as general.compat says")
    warmup_mode: Optional[Literal["passes", "flag"]] = option(
        None, "'passes': warmup = k BN passes; 'flag': one pass for any warmup > 0 (the official code); null: as "
              "general.compat says")
    mask_transform: Optional[Literal["eval", "train"]] = option(
        None, "mask data shown with the evaluation transform or the training augmentation (official); null: as "
              "general.compat says")
    mask_order: Optional[Literal["fixed", "reshuffle"]] = option(
        None, "mask batches in one fixed seeded order, or reshuffled every pass (official; seeded by the scoring "
              "seed); null: as general.compat says")
    mask_sampling: Optional[Literal["seeded", "unseeded"]] = option(
        None, "mask samples drawn with the run seed, or from fresh OS entropy on every launch (the official "
              "code never seeds Python's random; not reproducible, the indices are logged); null: as general.compat "
              "says")
    options: dict[str, Any] = option(factory=dict, help="criterion-specific options (validated by the criterion)")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {
        "prunable": {"paper": "module_type", "official": "official_names"},
        "kept_count": {"paper": "round", "official": "floor"},
        "warmup_mode": {"paper": "passes", "official": "flag"},
        "mask_transform": {"paper": "eval", "official": "train"},
        "mask_order": {"paper": "fixed", "official": "reshuffle"},
        "mask_sampling": {"paper": "seeded", "official": "unseeded"},
    }

    def check(self, path: str, problems: list[Problem]) -> None:
        try:
            parse_kinds(self.structure)
        except ValueError as exc:
            problems.append(Problem(f"{path}.structure", str(exc)))
        self._resolve_sparsity(path, problems)
        if self.min_layer_density is not None:
            where = f"{path}.min_layer_density"
            if self.mask != "global":
                problems.append(Problem(where, "a minimum layer density needs the global mask (with mask 'layer' "
                                               "every tensor already keeps 1 - sparsity); valid: null"))
            elif self.structure != "none":
                problems.append(Problem(where, "not defined for structured pruning; valid: null"))
            elif self.min_layer_density > 1.0 - self.sparsity + 1e-12:
                problems.append(Problem(where, f"{self.min_layer_density:g} is above the density "
                                               f"{1.0 - self.sparsity:g} the sparsity keeps overall; valid: (0, "
                                               f"{1.0 - self.sparsity:g}] or null"))
        if self.reprune_disconnected and self.structure != "none":
            problems.append(Problem(f"{path}.reprune_disconnected", "structured pruning removes whole structures; "
                                    "re-pruning disconnected weights is defined for single weights; valid: false"))
        if self.reprune_disconnected and self.ablation == "shuffle":
            problems.append(Problem(f"{path}.reprune_disconnected", "the 'shuffle' ablation permutes the mask after "
                                    "it is chosen, undoing the connectivity it was chosen for; valid: false"))

    def _resolve_sparsity(self, path: str, problems: list[Problem]) -> None:
        """``density`` or ``compression`` -> ``sparsity`` (rounded to 15 significant digits, so that a density of
        0.7 and a sparsity of 0.3 are one run), ``sparsity_form`` recording which was given; both fields are
        then null, so the resolved config names the sparsity once.  Two forms at once are a problem."""
        given = [f for f in ("density", "compression") if getattr(self, f) is not None]
        if len(given) > 1 or (given and self.sparsity != 0.0):
            both = (["sparsity"] if self.sparsity != 0.0 else []) + given
            problems.append(Problem(f"{path}.{given[-1]}", f"{' and '.join(both)} are both given; valid: one of "
                                    "sparsity [0, 1), density (0, 1] or compression [1, inf)"))
            return
        if not given:
            return
        form = given[0]
        value = getattr(self, form)
        sparsity = float(f"{1.0 - (value if form == 'density' else 1.0 / value):.15g}")
        if sparsity >= 1.0:
            problems.append(Problem(f"{path}.{form}", f"{value!r} keeps no weight (sparsity rounds to 1); valid: "
                                    + ("a density above 1e-15" if form == "density" else "a compression below 1e15")))
            return
        self.sparsity, self.sparsity_form = sparsity, form
        self.density = self.compression = None

    @staticmethod
    def forms_given(raw: Any, path: str) -> list[Problem]:
        """``sparsity`` given explicitly (even as its default 0) beside ``density`` or ``compression`` in the
        raw compressor section: :meth:`check` sees only values, so this reads the keys."""
        if not isinstance(raw, dict) or "sparsity" not in raw:
            return []
        other = [k for k in ("density", "compression") if raw.get(k) is not None]
        if not other or raw.get("sparsity") not in (0, 0.0):
            return []  # none, or a non-zero sparsity that check() reports
        return [Problem(f"{path}.{other[0]}", f"sparsity and {other[0]} are both given; valid: one of sparsity "
                                              "[0, 1), density (0, 1] or compression [1, inf)")]


@dataclass
class TrainingConfig:
    num_steps: int = option(10, "training epochs", min=0)
    local_epochs: int = option(0, "accepted for compatibility with the official configs; unused", min=0)
    grad_clip: Optional[float] = option(None, "clip the gradient norm to this value", min=0, min_exclusive=True)
    amp: Literal["none", "bf16", "fp16"] = option(
        "none", "mixed precision: autocast to bfloat16 or float16 (fp16 with a gradient scaler, checkpointed); "
                "on a CPU both run through CPU autocast (correct, usually not faster)")
    channels_last: bool = option(False, "channels_last memory format for the model and its inputs")
    max_batches: Optional[int] = option(None, "smoke runs: cap every pass over a loader (training epochs, BN "
                                              "warmup, validation, test) at this many batches; validation and "
                                              "test read that many batches of samples drawn at random with the "
                                              "run seed (the same every pass); null: whole passes",
                                        min=1)
    sync_bn: bool = option(False, "several ranks (torchrun): synchronise BatchNorm statistics across them "
                                  "(SyncBatchNorm; CUDA only, ignored with a notice on the CPU)")
    compile: bool = option(False, "torch.compile the model for training and evaluation (CUDA only; ignored with "
                                  "a notice on the CPU)")
    criterion: LossConfig = option(factory=LossConfig, help="training loss")
    optimizer: OptimizerConfig = option(factory=OptimizerConfig, help="optimizer")
    compressor: CompressorConfig = option(factory=CompressorConfig, help="pruning criterion and mask")


@dataclass
class ValidationConfig:
    metric: Literal["acc", "f1", "loss"] = option("acc", "metric that selects the best-validation model")
    frequency: int = option(1, "validate every this many epochs (and after the last)", min=1)


@dataclass
class ExperimentConfig:
    general: GeneralConfig = option(factory=GeneralConfig, help="run identity")
    dataset: DatasetConfig = option(factory=DatasetConfig, help="data")
    model: ModelConfig = option(factory=ModelConfig, help="network")
    training: TrainingConfig = option(factory=TrainingConfig, help="training and pruning")
    validation: ValidationConfig = option(factory=ValidationConfig, help="model selection")



def read_config_file(path: str | Path) -> Any:
    """The JSON content of a config file (:func:`utils.io.read_json`); a file that cannot be read, is not
    UTF-8 text, has a syntax error (line and column) or nests too deeply becomes a ConfigError naming the
    file."""
    try:
        return read_json(path)
    except OSError as exc:
        message = f"cannot read file: {exc.strerror or exc}"
    except UnreadableJSON as exc:
        message = exc.reason
    raise ConfigError([Problem("", message, str(path))])


def parse_config(data: Any, file: str | None = None) -> tuple[ExperimentConfig | None, list[Problem]]:
    """Parse a config dict; returns the config (None if unusable) and every problem found."""
    problems: list[Problem] = []
    cfg = parse_collect(ExperimentConfig, data, "", problems)
    raw_training = data.get("training") if isinstance(data, dict) else None
    if isinstance(raw_training, dict):
        problems += CompressorConfig.forms_given(raw_training.get("compressor"), "training.compressor")
    problems = [Problem(p.path, p.message, file) for p in problems]
    return cfg, problems
