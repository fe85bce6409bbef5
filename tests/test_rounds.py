"""The shared rounds loop (compressors.rounds): schedules, masking between rounds, count rules, fresh batches;
the exact final kept count of every iterative criterion under every schedule; SynFlow-L2 against the
procedure of its public implementations (PHEW ``Prune/synflowl2_utils.py``, px-ntk-pruning ``lib/pruners.py``
``SynFlowL2``) written here."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from naive import LOSS, mask_batches, small_cnn
from torch import nn

import compressors
from compressors import kept_count, prunable_names, select
from compressors.rounds import BatchStream, NonFiniteScores, round_mask, round_sparsities, run_rounds
from utils.schema import ConfigError


# ------------------------------------------------------------------------------------------- schedules
def test_schedules_reach_the_target_exactly_and_follow_their_formulas() -> None:
    s, n = 0.9, 6
    d = 1 - s
    exp = round_sparsities(s, n, "exponential")
    assert exp[-1] == s and all(1 - exp[k - 1] == pytest.approx(d ** (k / n)) for k in range(1, n + 1))
    # de Jorge et al.'s mode='exp': exp(-k log(1/d) / n) is the same density
    assert [1 - x for x in exp] == pytest.approx([math.exp(-k * -math.log(d) / n) for k in range(1, n + 1)])
    lin = round_sparsities(s, n, "linear")  # mode='linear': density 1 - k (1 - d) / n
    assert lin[-1] == s and [1 - x for x in lin] == pytest.approx([1 - k * (1 - d) / n for k in range(1, n + 1)])
    pf = round_sparsities(s, n, "prune_fraction")
    assert pf == [s ** (k / n) for k in range(1, n + 1)] and pf[-1] == s
    with pytest.raises(ValueError, match="round schedule must be one of"):
        round_sparsities(s, n, "cosine")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        round_sparsities(s, 0, "prune_fraction")


def test_round_rules_count_as_documented() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.rand(1000, generator=g)
    flat[::10] = 0.5  # ties
    for s in (0.5, 0.777, 0.9995):
        exact = round_mask(flat, s, "exact")
        assert int(exact.sum()) == kept_count(1000, s)
        assert torch.equal(exact, select({"w": flat}, s)["w"].bool())  # the same top-k as select
        assert int(round_mask(flat, s, "floor").sum()) == int((1 - s) * 1000)
        assert int(round_mask(flat, s, "torch_floor").sum()) == max(1, int((1 - s) * 1000))
    with pytest.raises(ValueError, match="round rule must be one of"):
        round_mask(flat, 0.5, "ceil")


# -------------------------------------------------------------------------------- the loop's mechanics
SHAPES = {"a": torch.Size([6, 5]), "b": torch.Size([40])}


def random_rounds(seed: int = 0):
    """A score function drawing fresh random scores every round and recording what it was given."""
    g = torch.Generator().manual_seed(seed)
    seen: list[dict] = []

    def score(r):
        seen.append({"index": r.index, "rounds": r.rounds, "sparsity": r.sparsity,
                     "masks": {n: m.clone() for n, m in r.masks.items()}})
        return {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}

    return score, seen


def flat(masks) -> torch.Tensor:
    return torch.cat([masks[n].reshape(-1) for n in SHAPES])


@pytest.mark.parametrize("masking", ["remask", "keep_out", "intersect"])
def test_each_round_scores_under_the_previous_rounds_mask(masking: str) -> None:
    score, seen = random_rounds()
    schedule = round_sparsities(0.8, 5)
    result = run_rounds(score, SHAPES, schedule, masking=masking)
    assert [r["index"] for r in seen] == [1, 2, 3, 4, 5] and {r["rounds"] for r in seen} == {5}
    assert [r["sparsity"] for r in seen] == schedule
    assert bool(flat(seen[0]["masks"]).all())  # round one: the dense network
    for k in range(1, 5):  # round k+1 saw the mask round k chose: exactly its count (exact rule)
        kept = int(flat(seen[k]["masks"]).sum())
        if masking == "intersect":
            assert kept <= kept_count(70, schedule[k - 1])
        else:
            assert kept == kept_count(70, schedule[k - 1])
        if masking != "remask":
            assert not bool((flat(seen[k]["masks"]) & ~flat(seen[k - 1]["masks"])).any())  # nothing returns
    final = select(result.scores, 0.8)
    assert int(flat(final).sum()) == kept_count(70, 0.8)
    if masking == "keep_out":  # the final mask stays inside the last round's, by the scores alone
        assert not bool((flat(final).bool() & ~flat(result.masks)).any())
        assert result.revived == 0
    if masking == "remask":  # random scores: weights pruned earlier do come back
        assert result.revived > 0


def test_a_round_that_is_not_finite_stops_the_loop() -> None:
    def nan_in_round_two(r):
        value = float("nan") if r.index == 2 else 1.0
        return {n: torch.full(s, value) for n, s in SHAPES.items()}

    result = run_rounds(nan_in_round_two, SHAPES, round_sparsities(0.5, 4))
    assert (result.finite, result.rounds_done) == (False, 2)

    def raises(r):
        raise NonFiniteScores("R overflowed")

    assert not run_rounds(raises, SHAPES, round_sparsities(0.5, 4)).finite
    with pytest.raises(ValueError, match="masking between rounds must be one of"):
        run_rounds(raises, SHAPES, [0.5], masking="regrow")


def test_batch_stream_hands_out_fresh_batches_and_starts_new_passes() -> None:
    batches = [(torch.full((1,), float(i)), torch.zeros(1, dtype=torch.long)) for i in range(5)]
    stream = BatchStream(batches)
    got = [int(x) for b in (stream.take(2), stream.take(2), stream.take(2)) for x, _ in b]
    assert got == [0, 1, 2, 3, 4, 0]  # the sixth starts a new pass
    assert [int(x) for x, _ in stream.take(None)] == [0, 1, 2, 3, 4]  # null: one whole pass
    with pytest.raises(ValueError, match="yielded no batch"):
        BatchStream([]).take(1)


# ---------------------------------------------------- every iterative criterion: the final count is exact
ITERATIVE = [("synflow", {"schedule": "keep_fraction"}), ("synflow", {"schedule": "prune_fraction"}),
             ("synflow_l2", {})]
ITERATIVE += [(name, {"schedule": sch}) for name in ("iter_snip", "force", "grasp_it") for sch in ("exponential",
                                                                                                  "linear")]


@pytest.mark.parametrize("name,opts", ITERATIVE)
@pytest.mark.parametrize("sparsity", [0.5, 0.93])
def test_the_final_kept_count_is_exact_for_every_iterative_criterion(name: str, opts: dict, sparsity: float) -> None:
    model, batches = small_cnn(), mask_batches()
    names = prunable_names(model)
    scores = compressors.build(name, rounds=4, **opts).score(model, batches, LOSS, sparsity=sparsity)
    total = sum(model.get_parameter(n).numel() for n in names)
    masks = select(scores, sparsity, "global")
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, sparsity)
    floor = select(scores, sparsity, "global", kept="floor")
    assert sum(int(m.sum()) for m in floor.values()) == kept_count(total, sparsity, "floor")


def test_the_shared_loop_is_used_by_every_iterative_criterion() -> None:
    """The one loop: no criterion keeps its own copy of the rounds (each calls run_rounds)."""
    import inspect

    import compressors.criteria.force as force
    import compressors.criteria.synflow as synflow
    for module in (force, synflow):
        assert "run_rounds(" in inspect.getsource(module)
    assert compressors.get("synflow_l2").__mro__[1] is compressors.get("synflow")


# ------------------------------------------------------------------ SynFlow-L2 vs its implementations
def authors_synflow_l2(model: nn.Module, names: list[str], shape, sparsity: float, rounds: int,
                       square_buffers: bool) -> dict:
    """PHEW ``synflowl2_prune_masks`` / px-ntk-pruning ``SynFlowL2`` as written there: a copy whose parameters
    are squared in place (px: every state_dict entry, buffers too), eval mode; each round a fresh copy of the
    squared net with the masks applied to its weights, ``sum(net(ones)).backward()``, score
    ``|grad| * sqrt(p)`` (PHEW; = |θ| m |grad|); the round keeps d^(k/n) of the weights.  The count is this
    project's exact round(d·N) (PHEW uses a percentile threshold, px N - floor((1 - d) N)): documented."""
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.data = p.data.abs_() * p.data.abs_()
        if square_buffers:
            for b in net.buffers():
                if b.is_floating_point():
                    b.pow_(2)
    masks = None
    for i in range(rounds):
        net1 = copy.deepcopy(net).eval()
        params = dict(net1.named_parameters())
        if masks is not None:
            with torch.no_grad():
                for n in names:
                    params[n].mul_(masks[n])
        net1(torch.ones([1, *shape], dtype=torch.float64)).sum().backward()
        scores = {n: (params[n].grad.abs() * torch.sqrt(params[n].data).abs()) for n in names}
        s_k = 1 - (1 - sparsity) ** ((i + 1) / rounds) if i + 1 < rounds else sparsity
        masks = select(scores, s_k)
    return masks


@pytest.mark.parametrize("buffers", ["unchanged", "squared"])
def test_synflow_l2_equals_the_authors_procedure(buffers: str) -> None:
    model = small_cnn().double()  # running statistics away from (0, 1), as after a BN warmup
    names = prunable_names(model)
    shape_loader = [(torch.zeros(1, 3, 6, 6), torch.zeros(1, dtype=torch.long))]
    scores = compressors.build("synflow_l2", rounds=6, buffers=buffers).score(model, shape_loader, sparsity=0.9)
    want = authors_synflow_l2(model, names, (3, 6, 6), 0.9, 6, buffers == "squared")
    got = select(scores, 0.9)
    assert all(torch.equal(got[n], want[n]) for n in names)
    other = authors_synflow_l2(model, names, (3, 6, 6), 0.9, 6, buffers != "squared")
    assert any(not torch.equal(got[n], other[n]) for n in names)  # the option matters after a warmup


def test_synflow_l2_one_round_is_theta_times_the_gradient_of_the_squared_network() -> None:
    """px-ntk-pruning's score of one round: |∂R/∂p · θ| with p = θ² (model left untouched)."""
    model = small_cnn()  # running statistics away from (0, 1), as after a BN warmup
    names = prunable_names(model)
    before = copy.deepcopy(model.state_dict())
    scores = compressors.build("synflow_l2", rounds=1).score(model, mask_batches((1,)), sparsity=0.5)
    lin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in lin.parameters():
            p.pow_(2)
    lin(torch.ones(1, 3, 6, 6)).sum().backward()
    lin_params, params = dict(lin.named_parameters()), dict(model.named_parameters())
    for n in names:
        torch.testing.assert_close(scores[n], (lin_params[n].grad * params[n]).abs(), rtol=1e-5, atol=1e-7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_synflow_l2_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="buffers"):
        compressors.build("synflow_l2", buffers="abs")
    with pytest.raises(ConfigError, match="rounds"):
        compressors.build("synflow_l2", rounds=0)
