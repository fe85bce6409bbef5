"""Structured pruning (compressors.structures): enumeration, aggregation, exact selection, masks that equal
the compact model, and the structured run + compact export end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from compressors.structures import Group, StructureSet, find_structures, parse_kinds
from export import export_run
from export.compact import load_compact
from launch.runner import run_config
from runspec import RunSpec
from utils.schema import ConfigError

# (model, options, input shape, structure) -> expected structures per kind and number of groups
ARCHITECTURES = [
    ("resnet18", {}, (3, 32, 32), "channel", {"channel": 64 * 3 + 128 * 3 + 256 * 3 + 512 * 3}, 12),
    ("resnet34", {}, (3, 32, 32), "channel", {"channel": (64 + 3 * 64) + (128 + 4 * 128) + (256 + 6 * 256)
                                                + (512 + 3 * 512)}, 4 + 3 + 4 + 6 + 3),
    # stem 64; per stage the residual stream (4x the width) and two inner convs per block
    ("resnet50", {}, (3, 32, 32), "channel", {"channel": 64 + 3840 + 2 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512)},
     1 + 4 + 2 * 16),
    ("resnet50_imagenet", {}, (3, 64, 64), "channel", {"channel": 64 + 3840 + 2 * (3 * 64 + 4 * 128 + 6 * 256
                                                                                    + 3 * 512)}, 1 + 4 + 2 * 16),
    ("vgg11", {}, (3, 32, 32), "channel", {"channel": 64 + 128 + 256 * 2 + 512 * 4}, 8),
    ("vit_small", {"depth": 2, "dim": 96, "heads": 6}, (3, 32, 32), "head+neuron", {"head": 12, "neuron": 2 * 384}, 4),
    ("vit_b_16", {}, (3, 32, 32), "head+neuron", {"head": 12 * 12, "neuron": 12 * 3072}, 24),
    ("mlp", {}, (1, 8, 8), "neuron", {"neuron": 256 + 128}, 2),
]


@pytest.mark.parametrize("name,options,shape,structure,counts,groups", ARCHITECTURES,
                         ids=[a[0] for a in ARCHITECTURES])
def test_enumeration_and_compact_equals_masked(name, options, shape, structure, counts, groups):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, input_shape=shape, **options).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structures = find_structures(model, structure, shape)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # tracing left the model alone
    assert structures.counts() == counts
    assert len(structures.groups) == groups
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(p.shape, generator=gen) for n, p in params.items() if p.dim() > 1}
    keep, record = structures.select(structures.structure_scores(scores), 0.5)
    total = sum(counts.values())
    assert record["structures_kept"] == round(0.5 * total) and record["structures_total"] == total
    masks = structures.masks(keep, params)
    assert [torch.equal(a, b) for a, b in zip(structures.keep_from_masks(masks), keep)] == [True] * len(keep)
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    compact = structures.compact(model, keep).eval()
    assert sum(p.numel() for p in compact.parameters()) == sum(int(torch.count_nonzero(m)) for m in masks.values()) \
        + sum(p.numel() for n, p in params.items() if n not in masks)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        masked, small = model(x), compact(x)
    assert (small - masked).norm() / masked.norm() < 1e-5


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 1, bias=False),
                         nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def test_aggregation_on_hand_computed_scores():
    model = tiny_net()
    structures = find_structures(model, "channel", (1, 4, 4))
    assert [(g.root, g.count) for g in structures.groups] == [("0", 2), ("3", 3)]
    # scores: conv "0" weight (2,1,1,1); conv "3" weight (3,2,1,1); channel j of conv 0 owns row j of "0.weight"
    # and column j of "3.weight"; channel i of conv 3 owns row i of "3.weight" (the classifier is not scored)
    s0 = torch.tensor([1.0, -2.0]).reshape(2, 1, 1, 1)
    s3 = torch.tensor([[3.0, 4.0], [0.5, -1.0], [2.0, 2.0]]).reshape(3, 2, 1, 1)
    scores = {"0.weight": s0, "3.weight": s3}
    first = {"sum": [1 + 3 + 0.5 + 2, -2 + 4 - 1 + 2], "mean": [6.5 / 4, 3 / 4],
             "l2": [math.sqrt(1 + 9 + 0.25 + 4), math.sqrt(4 + 16 + 1 + 4)], "max": [3.0, 4.0]}
    second = {"sum": [7.0, -0.5, 4.0], "mean": [3.5, -0.25, 2.0], "l2": [5.0, math.sqrt(1.25), math.sqrt(8)],
              "max": [4.0, 0.5, 2.0]}
    for aggregate in ("sum", "mean", "l2", "max"):
        a, b = structures.structure_scores(scores, aggregate)
        assert torch.allclose(a, torch.tensor(first[aggregate], dtype=torch.float64)), aggregate
        assert torch.allclose(b, torch.tensor(second[aggregate], dtype=torch.float64)), aggregate
    a, b = structures.structure_scores(scores, "sum", norm="layer")
    assert torch.allclose(a, torch.tensor([6.5, 3.0], dtype=torch.float64) / 9.5)
    assert torch.allclose(b, torch.tensor([7.0, -0.5, 4.0], dtype=torch.float64) / 11.5)


def synthetic(counts: list[int]) -> StructureSet:
    groups = [Group("channel", f"l{i}", n, {f"l{i}.weight": (0, torch.arange(n))}) for i, n in enumerate(counts)]
    return StructureSet(groups, ("channel",), (1,))


def test_exact_counts_ties_and_one_kept_per_layer():
    structures = synthetic([4, 6])
    scores = [torch.tensor([0.1, 0.2, 0.2, 0.3], dtype=torch.float64),
              torch.tensor([5.0, 5.0, 5.0, 4.0, 4.0, 1.0], dtype=torch.float64)]
    keep, record = structures.select(scores, 0.5)  # keep 5 of 10: l0's best is reserved, then the top 4 of the rest
    assert keep[0].tolist() == [False, False, False, True]
    assert keep[1].tolist() == [True, True, True, True, False, False]  # the tie at 4.0 goes to the lower index
    assert record["rescued_layers"] == ["l0"] and record["structures_kept"] == 5
    keep, record = structures.select(scores, 0.5, "layer")
    assert [int(k.sum()) for k in keep] == [2, 3]
    assert keep[0].tolist() == [False, True, False, True]  # 0.2 tie: the lower index
    keep, record = structures.select(scores, 0.9, "layer")  # round(0.1 * 4) = 0 -> one is kept anyway, recorded
    assert [int(k.sum()) for k in keep] == [1, 1] and record["rescued_layers"] == ["l0"]
    gen = torch.Generator().manual_seed(0)
    shuffled = structures.shuffle(keep, gen)
    assert [int(k.sum()) for k in shuffled] == [1, 1]


def test_parse_kinds_and_missing_structures():
    assert parse_kinds("head+neuron") == ("head", "neuron") and parse_kinds("none") == ()
    for bad in ("chanel", "head+head", "", "head+"):
        with pytest.raises(ValueError, match="structure must be"):
            parse_kinds(bad)
    with pytest.raises(ValueError, match="no head structures"):
        find_structures(tiny_net(), "head", (1, 4, 4))


def test_config_errors_name_the_field(make_config):
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"training.compressor.structure": "channels"}))
    assert "training.compressor.structure" in str(err.value) and "channel, neuron, head" in str(err.value)
    with pytest.raises(ConfigError, match="structured pruning is one-shot"):
        RunSpec.load(make_config(**{"training.compressor.structure": "channel", "general.experiment": "irp"}))
    with pytest.raises(ConfigError, match="sets its own density"):
        RunSpec.load(make_config(**{"training.compressor.structure": "channel", "training.compressor.class": "erk",
                                    "training.compressor.options": {}}))


def test_the_criterion_and_the_structures_own_their_config_checks():
    """``Compressor.check_config`` (with ``check_structure``) is what the run specification reports."""
    import compressors
    from compressors.structures import check_structure
    from runspec.config import CompressorConfig
    from utils.schema import Problem

    problems: list[Problem] = []
    check_structure("channel", "erk", ("global",), problems)
    check_structure("none", "erk", ("global",), problems)
    check_structure("channel", "snip", ("global", "layer"), problems)
    assert [p.path for p in problems] == ["training.compressor.structure"]
    assert "'erk' cannot drive structured pruning: it sets its own density per weight tensor" in problems[0].message
    comp = CompressorConfig(name="erk", mask="layer", structure="channel", prunable="official_names",
                            prune_biases=True)
    problems = []
    compressors.get("erk").check_config(comp, problems)
    assert [p.path for p in problems] == ["training.compressor.prunable", "training.compressor.structure",
                                          "training.compressor.mask"]
    dense = CompressorConfig(name="none", sparsity=0.9, structure="channel")
    problems = []
    compressors.get("none").check_config(dense, problems)
    assert problems == [] and (dense.sparsity, dense.structure) == (0.0, "none")  # the dense baseline's reset


def test_structured_run_records_and_exports_a_compact_model(make_config, tmp_path):
    config = make_config("structured", **{"model.class": "vgg11", "model.options": {}, "training.num_steps": 1,
                                          "training.max_batches": 2,
                                          "training.compressor.structure": "channel",
                                          "training.compressor.sparsity": 0.5})
    run_config(config, results=tmp_path / "results", log=lambda s: None)
    run_dir = RunSpec.load(config).run_dir(tmp_path / "results")
    results = json.loads((run_dir / "results.json").read_text())
    record = results["structures"]
    assert record["structures_kept"] == round(0.5 * record["structures_total"])
    assert record["structure_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert 0.5 < record["parameter_sparsity"] < 1  # a removed channel takes its inputs downstream with it
    manifest = export_run(run_dir, "compact", tmp_path / "compact")
    assert manifest["parameters_compact"] == results["params_effective"]
    compact = load_compact(tmp_path / "compact")
    masked = models.build("vgg11", num_classes=10, input_shape=(1, 8, 8)).eval()
    masked.load_state_dict(torch.load(run_dir / "final_model.pt"))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (compact(x) - masked(x)).norm() / masked(x).norm() < 1e-5
    arch = json.loads((tmp_path / "compact" / "architecture.json").read_text())
    assert arch["structure"] == "channel" and arch["parameters"] == manifest["parameters_compact"]


def test_compact_export_refuses_an_unstructured_run(make_config, tmp_path):
    config = make_config("plain", **{"training.num_steps": 1, "training.max_batches": 1})
    run_config(config, results=tmp_path / "results", log=lambda s: None)
    with pytest.raises(ValueError, match="nothing to cut out"):
        export_run(RunSpec.load(config).run_dir(tmp_path / "results"), "compact", tmp_path / "out")


def test_an_interrupted_structured_run_resumes_to_the_same_result(make_config, tmp_path):
    from tests.helpers import interrupt_after

    config = make_config("resume", **{"training.num_steps": 2, "training.max_batches": 2,
                                      "training.compressor.structure": "channel",
                                      "training.compressor.sparsity": 0.5})
    interrupt_after(config, tmp_path / "a", epochs=1)
    run_config(config, results=tmp_path / "a", log=lambda s: None)
    run_config(config, results=tmp_path / "b", log=lambda s: None)
    spec = RunSpec.load(config)
    a, b = spec.run_dir(tmp_path / "a"), spec.run_dir(tmp_path / "b")
    assert json.loads((a / "status.json").read_text())["resumed"]
    ma, mb = torch.load(a / "mask.pt"), torch.load(b / "mask.pt")
    assert set(ma) == set(mb) and all(torch.equal(ma[n], mb[n]) for n in ma)
    assert any(n.endswith("1.weight") for n in ma)  # the BN scales of removed channels are masked too
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["final_test_acc"] == rb["final_test_acc"] and ra["final_test_loss"] == rb["final_test_loss"]
    assert ra["structures"]["groups"] == rb["structures"]["groups"]


def test_a_structured_vit_run_exports_heads_and_neurons_cut_out(tmp_path):
    config = tmp_path / "vit.json"
    base = json.loads((Path(__file__).resolve().parent.parent / "exp_configs" / "digits_structured" /
                       "base.json").read_text())
    base["general"].update(output_dir=None, trackers=[])
    base["training"].update(num_steps=1, max_batches=2)
    base["training"]["compressor"].update({"class": "snip", "sparsity": 0.5, "aggregate": "mean"})
    config.write_text(json.dumps(base))
    run_config(config, results=tmp_path / "results", log=lambda s: None)
    run_dir = RunSpec.load(config).run_dir(tmp_path / "results")
    record = json.loads((run_dir / "results.json").read_text())["structures"]
    assert record["per_kind"]["head"]["kept"] < record["per_kind"]["head"]["total"]  # mean lets heads compete
    export_run(run_dir, "compact", tmp_path / "out")
    compact = load_compact(tmp_path / "out")
    masked = models.build("vit_small", num_classes=10, input_shape=(1, 8, 8),
                          **base["model"]["options"]).eval()
    masked.load_state_dict(torch.load(run_dir / "final_model.pt"))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (compact(x) - masked(x)).norm() / masked(x).norm() < 1e-5
    assert sum(b.attn.heads for b in compact.blocks) == record["per_kind"]["head"]["kept"]
