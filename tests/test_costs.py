"""Cost accounting (compressors/costs.py): parameters and FLOPs of one forward pass against hand counts,
dense and effective (unstructured masks, a compact model), and their record in every run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from compressors.costs import TOP, count_costs
from launch.runner import run_config
from runspec.folder import Files
from utils.io import load_torch


def small_net(width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 4 * 4, 10))


# hand counts for a 1x3x4x4 input; a FLOP is half a multiply-add (torch.utils.flop_counter's convention)
CONV_MACS = 8 * 4 * 4 * (3 * 3 * 3)      # output channels x output positions x (C_in x k_h x k_w)
LINEAR_MACS = (8 * 4 * 4) * 10           # n_in x n_out, one token
CONV_PARAMS, LINEAR_PARAMS = 8 * 3 * 3 * 3 + 8, 128 * 10 + 10


def test_flops_and_params_of_a_small_net_equal_the_hand_count() -> None:
    costs = count_costs(small_net(), torch.zeros(1, 3, 4, 4))
    assert costs.counted_on == "meta" and costs.pruning == "none"
    assert costs.flops_dense == 2 * (CONV_MACS + LINEAR_MACS) == 9472
    assert costs.params_dense == CONV_PARAMS + LINEAR_PARAMS == 1514
    assert (costs.flops_effective, costs.params_effective) == (costs.flops_dense, costs.params_dense)
    rows = {r.name: r for r in costs.layers}
    assert set(rows) == {"0", "3"}  # ReLU and Flatten have neither parameters nor counted FLOPs
    assert (rows["0"].type, rows["0"].flops, rows["0"].params) == ("Conv2d", 2 * CONV_MACS, CONV_PARAMS)
    assert (rows["3"].type, rows["3"].flops, rows["3"].params) == ("Linear", 2 * LINEAR_MACS, LINEAR_PARAMS)
    assert count_costs(small_net(), torch.zeros(3, 3, 4, 4)).flops_dense == 3 * 9472  # per example batch


def test_effective_flops_with_a_hand_made_mask_count_the_kept_multiply_adds() -> None:
    net = small_net()
    conv_mask = torch.zeros(8, 3, 3, 3, dtype=torch.bool)
    conv_mask[:2] = True                                   # 54 of 216 conv weights kept
    lin_mask = torch.zeros(10, 128, dtype=torch.bool)
    lin_mask[:, ::2] = True                                # 640 of 1280
    costs = count_costs(net, torch.zeros(1, 3, 4, 4), masks={"0.weight": conv_mask, "3.weight": lin_mask})
    # every kept weight does one multiply-add per output position: 16 for the conv, 1 for the Linear layer
    assert costs.flops_effective == 2 * (54 * 16 + 640 * 1) == 3008
    assert costs.params_effective == (54 + 8) + (640 + 10)
    assert costs.flops_dense == 9472 and costs.pruning == "unstructured"
    rows = {r.name: r for r in costs.layers}
    assert rows["0"].density == 0.25 and rows["3"].density == 0.5
    # a masked bias removes parameters, not counted FLOPs (bias additions are not multiply-adds)
    bias = count_costs(net, torch.zeros(1, 3, 4, 4), masks={"0.bias": torch.tensor([True] * 4 + [False] * 4)})
    assert (bias.params_effective, bias.flops_effective) == (1514 - 4, 9472)


def test_a_compact_model_is_counted_with_the_same_code() -> None:
    compact = small_net(width=4)  # half the conv channels cut out, the Linear layer's inputs with them
    costs = count_costs(small_net(), torch.zeros(1, 3, 4, 4), compact=compact)
    assert costs.pruning == "structured"
    assert costs.flops_effective == 2 * (4 * 16 * 27 + 64 * 10) == 4736
    assert costs.params_effective == (4 * 27 + 4) + (64 * 10 + 10)
    assert {r.name: r.flops_effective for r in costs.layers} == {"0": 2 * 4 * 16 * 27, "3": 2 * 640}
    with pytest.raises(ValueError, match="not both"):
        count_costs(small_net(), torch.zeros(1, 3, 4, 4), compact=compact, masks={})


def test_attention_products_are_counted_in_their_block() -> None:
    vit = models.build("vit_small", num_classes=3, input_shape=(3, 8, 8), patch_size=4, dim=8, depth=1, heads=2)
    costs = count_costs(vit, torch.zeros(1, 3, 8, 8))
    rows = {r.name: r for r in costs.layers}
    tokens, head_dim = 4 + 1, 4  # 2x2 patches + the class token
    # q k^T and softmax(.) v: 2 products of N x N x d multiply-adds per head
    assert rows["blocks.0.attn"].flops == 2 * 2 * (2 * tokens * tokens * head_dim) == 800
    assert rows["blocks.0.attn.qkv"].flops == 2 * tokens * 8 * 24
    assert rows[TOP].params == sum(p.numel() for n, p in vit.named_parameters() if "." not in n)  # cls, pos
    assert costs.params_dense == sum(p.numel() for p in vit.parameters())
    assert costs.flops_dense == sum(r.flops for r in costs.layers)


class NeedsData(nn.Module):
    """A forward that reads a value of its input: cannot run on meta tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * (2.0 if float(x.sum()) > 0 else 1.0)


def test_a_forward_that_needs_data_is_counted_on_the_example_batch() -> None:
    net = NeedsData().train()
    costs = count_costs(net, torch.ones(1, 6))
    assert costs.counted_on == "example batch" and costs.flops_dense == 2 * 6 * 2
    assert net.training and net.fc.weight.grad is None


def test_masks_naming_unknown_parameters_are_refused() -> None:
    with pytest.raises(KeyError, match="nope.weight"):
        count_costs(small_net(), torch.zeros(1, 3, 4, 4), masks={"nope.weight": torch.ones(2, dtype=torch.bool)})


def test_every_run_records_its_costs(make_config, tmp_path: Path) -> None:
    out = run_config(make_config(**{"training.num_steps": 1, "training.max_batches": 2}), results=tmp_path,
                     log=lambda s: None)
    assert out.status == "completed"
    run = Path(out.run_dir)
    results = json.loads((run / Files.RESULTS).read_text())
    table = json.loads((run / Files.COSTS).read_text())
    masks = load_torch(run / Files.MASK)
    # digits_cnn width 8 on 1x8x8: three 3x3 convs (8x8, 8x8, then 4x4 after the pool) and the classifier
    macs = [8 * 64 * 9 * 1, 16 * 64 * 9 * 8, 16 * 16 * 9 * 16, 16 * 10]
    assert results["flops_dense"] == 2 * sum(macs)
    kept = {n: int(m.sum()) / m.numel() for n, m in masks.items()}
    convs = ["0.weight", "3.weight", "7.weight"]
    assert results["flops_effective"] == sum(round(2 * m * kept[n]) for m, n in zip(macs, convs)) + 2 * macs[3]
    assert results["params_dense"] == results["total_parameters"]
    assert results["params_effective"] == results["total_parameters"] - (results["prunable_parameters"]
                                                                           - results["kept_parameters"])
    assert {k: table[k] for k in ("params_dense", "flops_dense", "flops_effective")} == {
        k: results[k] for k in ("params_dense", "flops_dense", "flops_effective")}
    assert table["model_inputs"] == {"num_classes": 10, "input_shape": [1, 8, 8]}
    assert [r["name"] for r in table["layers"] if r["flops"]] == ["0", "3", "7", "12"]


def test_the_report_draws_accuracy_against_flops_and_parameters(tmp_path: Path) -> None:
    from reporting import build_report
    from reporting.aggregate import cost_table
    from tests.test_report import make_run

    results = tmp_path / "results"
    dense_flops, dense_params = 1000.0, 100.0
    for seed in (0, 1):
        for crit, s in (("none", 0.0), ("snip", 0.5), ("snip", 0.9), ("random", 0.9)):
            run = make_run(results, criterion=crit, sparsity=s, seed=seed, acc=0.95 - s / 10)
            record = json.loads((run / Files.RESULTS).read_text())
            record.update(params_dense=dense_params, params_effective=dense_params * (1 - s) + 2 * seed,
                          flops_dense=dense_flops, flops_effective=dense_flops * (1 - s))
            (run / Files.RESULTS).write_text(json.dumps(record))
    report = build_report(results, tmp_path / "rep", log=lambda s: None, progress=False)
    stems = {p.stem for p in report.figures if p.suffix == ".png"}
    assert {"acc_vs_flops_digits_digits_cnn_warmup0", "acc_vs_params_digits_digits_cnn_warmup0"} <= stems
    table = cost_table(report.aggregated).set_index(["criterion", "sparsity"])
    assert table.loc[("snip", 0.9), "flops"] == 100
    assert table.loc[("snip", 0.9), "flops_%_dense"] == pytest.approx(10.0)
    assert table.loc[("snip", 0.5), "params"] == 51  # mean over the seeds: 50 and 52 kept
    assert table.loc[("dense", 0.0), "flops_%_dense"] == 100.0
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "## Cost per forward pass" in page and "![acc_vs_flops_digits_digits_cnn_warmup0]" in page
