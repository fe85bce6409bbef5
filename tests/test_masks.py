"""Scores -> masks: exact kept count, global vs layer scope, deterministic ties; prunable parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compressors
from compressors import kept_count, prunable_names, select


def _scores(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(7, 3, generator=g), "b": torch.rand(101, generator=g) * 3, "c": torch.rand(2, 2, 2,
                                                                                                        generator=g)}


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.97, 0.999])
def test_global_mask_keeps_exactly_round_of_the_total(sparsity: float) -> None:
    scores = _scores()
    n = sum(s.numel() for s in scores.values())
    masks = select(scores, sparsity, "global")
    assert int(sum(m.sum().item() for m in masks.values())) == round((1 - sparsity) * n)
    kept = torch.cat([s[m.bool()] for s, m in zip(scores.values(), masks.values())])
    dropped = torch.cat([s[~m.bool()] for s, m in zip(scores.values(), masks.values())])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()  # one threshold over all tensors
    assert {k: m.shape for k, m in masks.items()} == {k: s.shape for k, s in scores.items()}


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_layer_mask_keeps_the_fraction_of_every_tensor(sparsity: float) -> None:
    scores = _scores(1)
    masks = select(scores, sparsity, "layer")
    for name, s in scores.items():
        assert int(masks[name].sum()) == kept_count(s.numel(), sparsity)
        kept, dropped = s[masks[name].bool()], s[~masks[name].bool()]
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()
    # global differs from layer when scales differ between tensors ("b" is 3x larger)
    glob = select(scores, sparsity, "global")
    assert glob["b"].mean() > masks["b"].mean()


def test_ties_are_broken_by_position_and_nan_ranks_lowest() -> None:
    scores = {"x": torch.ones(10), "y": torch.tensor([float("nan"), 2.0, 1.0])}
    masks = select(scores, 0.5, "global")  # keep round(6.5) = 6 (Python rounds half to even)
    # 2.0 first, then the five earliest of the eleven tied 1.0 scores ("x" precedes "y" in the flat order)
    assert masks["y"].tolist() == [0.0, 1.0, 0.0]
    assert masks["x"].tolist() == [1.0] * 5 + [0.0] * 5
    again = select(scores, 0.5, "global")
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        select(_scores(), 1.0)
    with pytest.raises(ValueError):
        select(_scores(), 0.5, "per-tensor")  # type: ignore[arg-type]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.hidden = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x)).mean((2, 3))
        return self.head(self.ln(self.hidden(x)))


def test_prunable_parameters_are_chosen_by_module_type() -> None:
    net = Net()
    assert prunable_names(net) == ["conv.weight", "hidden.weight"]
    assert prunable_names(net, include_classifier=True) == ["conv.weight", "hidden.weight", "head.weight"]
    assert prunable_names(net, include_biases=True) == ["conv.weight", "conv.bias", "hidden.weight", "hidden.bias"]
    assert compressors.classifier_name(net) == "head"


def test_mask_helpers() -> None:
    masks = {"a": torch.tensor([1.0, 0.0, 0.0, 0.0]), "b": torch.zeros(4)}
    assert compressors.density(masks) == {"a": 0.25, "b": 0.0}
    assert compressors.global_sparsity(masks) == pytest.approx(7 / 8)
    assert compressors.collapsed_layers(masks) == ["b"]
