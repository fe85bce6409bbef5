"""PHEW (Patil & Dovrolis, ICML 2021): "Paths with Higher Edge Weights", a data-free mask built by biased
random walks on the initial weights.

The procedure (authors' code ``PHEW/phew.py``: ``generate_probability``, ``phew_masks``):

- **Transition probabilities** (``generate_probability``).  For a layer of weight ``W`` shaped
  ``(n_out, n_in, k...)`` let ``A[i, j] = Σ_k |W[i, j, k]|`` (the kernel's L1 norm; ``|W[i, j]|`` for a
  Linear layer).  A walk entering the layer at input unit ``j`` moves to output unit ``i`` with
  ``P_fwd(i | j) = A[i, j] / Σ_i' A[i', j]`` (their ``prob``); a walk entering at output unit ``i`` moves to
  input unit ``j`` with ``P_bwd(j | i) = A[i, j] / Σ_j' A[i, j']`` (their ``reverse_prob``); an all-zero row
  or column is uniform.  Inside a conv kernel the weight is drawn with ``P(k | i, j) = |W[i, j, k]| / A[i, j]``
  (their ``kernel_prob``).  The edge taken, ``W[i, j, k]``, is kept.
- **Walks** (``phew_masks``).  Walks alternate: even walks start at an input unit of the network (round robin
  over the first layer's inputs: 0, 1, 2, ...) and go forward to the output layer; odd walks start at an
  output unit (round robin over the classes) and go backward to the first layer.  Between a conv and a Linear
  layer fed by its flattened output (``HW = in_features / channels``) channel ``c`` goes forward to one of the
  inputs ``c·HW .. c·HW + HW - 1`` uniformly, and input ``u`` goes back to channel ``u // HW``
  (``conv_to_linear_unit``).  Where the network branches (a ResNet block with a 1x1 shortcut conv) the walk
  picks one branch with equal probability; identity shortcuts are never taken (they hold no weight), as in
  the authors' code.
- **Stopping rule.**  Walks are added until the mask holds the target number of weights.

The branching is read from the network itself: the model is traced with ``torch.fx`` and each Conv/Linear
layer's predecessors are the layers whose output reaches its input without another Conv/Linear in between
(an ``add`` whose one operand is an ancestor of the other is an identity shortcut: only the residual branch
counts).  The authors hard-code their ResNet's parameter order instead (a 1x1 conv three weights ahead is
a shortcut); on that ResNet the backward walk is the same, the forward walk is not (option ``shortcut``).

Where this implementation and the authors' code differ:

- ``shortcut``: ``"graph"`` (default; the network's connections) or ``"official"``: their forward walk decides
  on the shortcut one layer early: a walk entering the last conv of a block (``k`` with a 1x1 conv at
  ``k + 3``) jumps, with probability 1/2, straight into the next block's shortcut with its current unit, so
  that conv is skipped, and a walk that does not jump never takes the shortcut.  The backward walks agree.
- Kept count: their loop checks the count after every complete walk, so it overshoots
  ``int((1 - p/100)·N)`` by less than one walk's length (at most one weight per layer, 21 on ResNet18), with
  ``N`` every conv/linear weight.  Here the count is the one :func:`compressors.select` keeps,
  ``round((1 - s)·N)`` over the prunable weights, and the last walk is cut where that count is reached.
  Layers outside the prunable set (the classifier, unless ``prune_classifier``) are walked through but not
  counted, and stay dense as the run's prunable set says.
- Kernel positions: their ``inds // kh, inds % kh`` is the row-major position only for square kernels; here
  the flat position is used (the same on square kernels).  An all-zero kernel gives them NaN probabilities;
  here its positions are uniform.
- Randomness: their walks use Python's ``random`` and NumPy's global RNG one draw at a time; here one
  ``torch.Generator`` (option ``seed``) draws for ``walkers`` walks at once with ``torch.multinomial``.  The
  mask therefore depends on ``walkers`` (its distribution does not).

**Scores** are the order of first selection: the first weight a walk keeps scores ``K``, the next ``K - 1``,
..., the K-th scores 1, every other weight 0 (``K`` = the kept count).  ``select(scores, s, "global")``
therefore keeps exactly the walks' weights, and any smaller count (``kept_count: "floor"``) keeps the first
ones the walks chose: the PHEW mask stopped at that count.  Float32 holds these ranks exactly up to 2^24
(float64 beyond).  PHEW sets its own layer densities: ``compressor.mask`` must be ``global``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import fx, nn

from compressors import register
from compressors.base import PRUNABLE_TYPES, Compressor, ScoreMap
from compressors.masks import kept_count
from compressors.options import SeedOptions, estimator_generator
from utils.schema import option

INPUT = -1  # the network input, in a layer's predecessors
ADD_OPS = (operator.add, operator.iadd, torch.add)


@dataclass
class PhewOptions(SeedOptions):
    kernel_conserved: bool = option(False, "keep the whole kernel of every conv edge a walk takes (authors' "
                                           "phew_masks(kernel_conserved=False) default: only the drawn weight)")
    shortcut: Literal["graph", "official"] = option(
        "graph", "'graph': at a branch (ResNet block with a 1x1 shortcut) a walk takes either branch with "
                 "probability 1/2, following the network's connections; 'official': the authors' forward walk, "
                 "which decides one layer early and skips the block's last conv when it takes the shortcut "
                 "(backward walks are the same)")
    walkers: int = option(1024, "walks drawn at once (speed vs memory; the mask's distribution does not depend "
                                "on it, the draw does)", min=1, max=1 << 20)
    max_walks: int = option(100_000_000, "stop with an error after this many walks (weights the walks cannot "
                                         "reach: zero weights)", min=1)


@dataclass
class Layer:
    """One Conv/Linear layer of the walk graph."""

    module: str
    weight: torch.Tensor  # detached, float64, CPU, shaped (n_out, n_in, kernel)
    pred: list[int]       # layers feeding its input (INPUT for the network input)
    succ: list[int]
    to_output: bool
    conv: bool

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> int:
        return self.weight.shape[2]


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a))
    return found


def walk_graph(model: nn.Module) -> list[Layer]:
    """The Conv/Linear layers of ``model`` in execution order with their predecessors and successors, read
    from a ``torch.fx`` trace (see the module docstring for the identity-shortcut rule)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure gets the same explanation
        raise ValueError(f"phew needs the network's connections and could not trace {type(model).__name__} with "
                         f"torch.fx ({type(err).__name__}: {err}); valid: a model without data-dependent "
                         "control flow (the CIFAR ResNets, VGG, digits_cnn, mlp)") from err
    modules = dict(model.named_modules())
    sources: dict[fx.Node, frozenset[int]] = {}
    ancestors: dict[fx.Node, frozenset[fx.Node]] = {}
    layers: list[Layer] = []
    index: dict[str, int] = {}
    out_sources: frozenset[int] = frozenset()
    for node in graph.nodes:
        args = _node_args(node)
        ancestors[node] = frozenset(args).union(*(ancestors[a] for a in args))
        if node.op == "placeholder":
            sources[node] = frozenset({INPUT})
            continue
        if node.op == "call_module" and isinstance(modules[node.target], PRUNABLE_TYPES):
            module = modules[node.target]
            if node.target in index:
                raise ValueError(f"phew: layer '{node.target}' is called more than once; valid: each Conv/Linear "
                                 "layer used once")
            if getattr(module, "groups", 1) != 1:
                raise ValueError(f"phew: layer '{node.target}' is a grouped conv (groups={module.groups}); "
                                 "valid: groups=1")
            w = module.weight.detach().to("cpu", torch.float64)
            index[node.target] = len(layers)
            pred = sorted(sources[args[0]]) if args else []
            layers.append(Layer(node.target, w.reshape(w.shape[0], w.shape[1], -1), pred, [], False,
                                not isinstance(module, nn.Linear)))
            sources[node] = frozenset({index[node.target]})
            continue
        if node.op == "output":
            out_sources = frozenset().union(*(sources[a] for a in args))
            continue
        keep = list(args)
        if len(args) == 2 and ((node.op == "call_function" and node.target in ADD_OPS)
                               or (node.op == "call_method" and node.target in ("add", "add_"))):
            a, b = args
            if a in ancestors[b]:
                keep = [b]  # identity shortcut: a reaches the add directly and through b
            elif b in ancestors[a]:
                keep = [a]
        sources[node] = frozenset().union(*(sources[a] for a in keep))
    if not layers:
        raise ValueError("phew: the model has no Conv/Linear layer to walk through")
    for i, layer in enumerate(layers):
        layer.to_output = i in out_sources
        for p in layer.pred:
            if p != INPUT:
                layers[p].succ.append(i)
    for i, layer in enumerate(layers):
        for p in layer.pred:
            _spatial(layers, p, i)
    return layers


def _spatial(layers: list[Layer], p: int, i: int) -> int:
    """Input units of layer ``i`` per output unit of its predecessor ``p``: 1, or ``HW`` where a Linear layer
    reads a conv's flattened (channel-major) output."""
    if p == INPUT:
        return 1
    got, want = layers[p].n_out, layers[i].n_in
    if want == got:
        return 1
    if want % got == 0 and layers[p].conv and not layers[i].conv:
        return want // got
    raise ValueError(f"phew: layer '{layers[i].module}' takes {want} inputs but its predecessor "
                     f"'{layers[p].module}' gives {got} units; valid: equal, or a Linear reading a conv's "
                     "flattened output (a multiple)")


def edge_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, |W|)`` of a weight shaped ``(n_out, n_in, kernel)``: ``A[i, j] = Σ_k |W[i, j, k]|`` (the authors'
    ``get_norm``)."""
    absw = weight.abs()
    return absw.sum(2), absw


def transition_tables(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P_fwd, P_bwd, P_kernel)`` of one layer (the authors' ``prob``, ``reverse_prob``, ``kernel_prob``):
    ``P_fwd[j, i] = A[i, j] / Σ_i' A[i', j]``, ``P_bwd[i, j] = A[i, j] / Σ_j' A[i, j']``,
    ``P_kernel[i, j, k] = |W[i, j, k]| / A[i, j]``; all-zero rows are uniform.  The walks draw from the
    same rows unnormalised (:meth:`_Walker._draw`)."""
    a, absw = edge_weights(weight)

    def rows(t: torch.Tensor) -> torch.Tensor:
        s = t.sum(-1, keepdim=True)
        return torch.where(s > 0, t / torch.where(s > 0, s, 1.0), 1.0 / t.shape[-1])

    return rows(a.t().contiguous()), rows(a), rows(absw)


class _Walker:
    """Vectorised walks on the layer graph; ``counted[i]`` is the offset of layer i's weights in the flat score
    vector, or -1 for a layer walked through but not scored."""

    def __init__(self, layers: list[Layer], counted: list[int], options: PhewOptions, gen: torch.Generator) -> None:
        self.layers, self.counted, self.gen = layers, counted, gen
        self.kernel_conserved, self.official = options.kernel_conserved, options.shortcut == "official"
        # cumulative rows of the unnormalised tables: a draw is one uniform number and a binary search
        self.tables = []
        for layer in layers:
            a, absw = edge_weights(layer.weight)
            self.tables.append((a.t().contiguous().cumsum(1), a.cumsum(1), absw.cumsum(2)))
        self.inputs = [i for i, layer in enumerate(layers) if INPUT in layer.pred]
        self.outputs = [i for i, layer in enumerate(layers) if layer.to_output]
        if not self.inputs or not self.outputs:
            raise ValueError("phew: no Conv/Linear layer reads the network input or feeds its output")
        for units, ends, what in ((layers[self.inputs[0]].n_in, self.inputs, "input"),
                                  (layers[self.outputs[0]].n_out, self.outputs, "output")):
            if any((layers[i].n_in if what == "input" else layers[i].n_out) != units for i in ends):
                raise ValueError(f"phew: the layers at the network {what} differ in their number of units")
        self.n_in, self.n_out = layers[self.inputs[0]].n_in, layers[self.outputs[0]].n_out
        self.kmax = max(layer.kernel for layer in layers)
        if self.official:
            for layer in layers:
                for alt in layer.succ[1:]:
                    if layers[alt].n_in != layer.n_in:
                        raise ValueError(f"phew: shortcut 'official' jumps from '{layer.module}' to "
                                         f"'{layers[alt].module}' but their inputs differ; valid: 'graph'")

    def _choose(self, options: list[int], n: int) -> torch.Tensor:
        if len(options) == 1:
            return torch.full((n,), options[0], dtype=torch.long)
        pick = torch.randint(len(options), (n,), generator=self.gen)
        return torch.tensor(options, dtype=torch.long)[pick]

    def _draw(self, cdf: torch.Tensor) -> torch.Tensor:
        """One index per row of ``cdf`` (cumulative probabilities), index ``i`` with probability ``p_i``:
        ``cdf[i-1] <= r·cdf[-1] < cdf[i]`` for a uniform ``r`` (zero-probability entries are never drawn).
        The same distribution as ``torch.multinomial(p, 1)``, which is 15-25x slower here (34 ms against
        2.3 ms for 512 rows of 512 units, float64, this project's 2-core CPU).
        An all-zero row is uniform."""
        n = cdf.shape[1]
        r = torch.rand(cdf.shape[0], 1, generator=self.gen, dtype=cdf.dtype)
        total = cdf[:, -1:]
        idx = torch.searchsorted(cdf, r * total, right=True).clamp_(max=n - 1)
        return torch.where(total > 0, idx, (r * n).long().clamp_(max=n - 1)).squeeze(1)

    def batch(self, forward: bool, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk ``len(seeds)`` walks from these units; returns ``(keys, flat indices)`` of the counted weights
        taken, keys ordering them by walk, then step, then kernel position (the drawn one first)."""
        n, layers = len(seeds), self.layers
        at = self._choose(self.inputs if forward else self.outputs, n)
        unit = seeds.clone()
        keys, flats = [], []
        order = range(len(layers)) if forward else range(len(layers) - 1, -1, -1)
        for step, li in enumerate(order):
            walkers = (at == li).nonzero().squeeze(1)
            if walkers.numel() == 0:
                continue
            layer, (p_fwd, p_bwd, p_ker) = layers[li], self.tables[li]
            u = unit[walkers]
            if forward and self.official and len(layer.succ) > 1:  # the authors' early shortcut decision
                jump = self._choose(list(range(len(layer.succ))), len(walkers))  # 0: stay, k: jump to succ[k]
                moved = jump > 0
                at[walkers[moved]] = torch.tensor(layer.succ, dtype=torch.long)[jump[moved]]
                walkers, u = walkers[~moved], u[~moved]
            if forward:
                out, inp = self._draw(p_fwd[u]), u
            else:
                out, inp = u, self._draw(p_bwd[u])
            pos = self._draw(p_ker[out, inp]) if layer.kernel > 1 else torch.zeros_like(out)
            if self.counted[li] >= 0:
                base = self.counted[li] + (out * layer.n_in + inp) * layer.kernel
                key = (walkers * len(layers) + step) * (self.kmax + 1)
                keys.append(key)
                flats.append(base + pos)
                if self.kernel_conserved and layer.kernel > 1:
                    rest = torch.arange(layer.kernel).expand(len(walkers), -1)
                    rest = rest[rest != pos.unsqueeze(1)].reshape(len(walkers), -1)
                    keys.append((key.unsqueeze(1) + 1 + torch.arange(layer.kernel - 1)).reshape(-1))
                    flats.append((base.unsqueeze(1) + rest).reshape(-1))
            nxt = layer.succ if forward else [p for p in layer.pred if p != INPUT]
            if not nxt:
                at[walkers] = -2  # done
                continue
            if forward and self.official:
                nxt = nxt[:1]  # the authors' walk that did not jump stays on the main branch
            go = self._choose(nxt, len(walkers))
            at[walkers] = go
            hw = torch.ones(len(layers), dtype=torch.long)
            for j in nxt:
                hw[j] = _spatial(layers, li, j) if forward else _spatial(layers, j, li)
            hw = hw[go]
            if forward:  # channel c -> one of the flattened inputs c·HW .. c·HW + HW - 1, uniformly
                offset = torch.randint(1 << 62, (len(walkers),), generator=self.gen) % hw
                unit[walkers] = out * hw + offset
            else:  # flattened input u -> channel u // HW
                unit[walkers] = torch.div(inp, hw, rounding_mode="floor")
        if not keys:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return torch.cat(keys), torch.cat(flats)


def phew_order(layers: list[Layer], counted: list[int], total: int, budget: int, options: PhewOptions,
               gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """The first ``budget`` distinct counted weights (flat indices, in the order the walks take them) and the
    number of walks drawn.  Walk ``w`` (0-based) goes forward from input unit ``(w // 2) mod n_in`` when ``w``
    is even, backward from output unit ``(w // 2) mod n_out`` when odd (the authors' round robin)."""
    walker = _Walker(layers, counted, options, gen)
    taken = torch.zeros(total, dtype=torch.bool)
    chosen: list[torch.Tensor] = []
    have, walks = 0, 0
    half = max(1, options.walkers // 2)
    while have < budget:
        if walks >= options.max_walks:
            raise ValueError(f"phew: {walks:,} walks kept {have:,} of the {budget:,} weights wanted (options."
                             "max_walks); the walks cannot reach weights that are zero: lower the density or "
                             "raise max_walks")
        pair = torch.arange(walks // 2, walks // 2 + half)
        kf, ff = walker.batch(True, pair % walker.n_in)
        kb, fb = walker.batch(False, pair % walker.n_out)
        # interleaved: forward walk t of the batch is its walk 2t, backward walk t its walk 2t + 1
        per_walk = len(layers) * (walker.kmax + 1)
        keys = torch.cat([(kf // per_walk) * 2 * per_walk + kf % per_walk,
                          (kb // per_walk) * 2 * per_walk + per_walk + kb % per_walk])
        flats = torch.cat([ff, fb])
        walks += 2 * half
        fresh = ~taken[flats]
        keys, flats = keys[fresh], flats[fresh]
        if flats.numel() == 0:
            continue
        keys, perm = torch.sort(keys)
        flats = flats[perm]
        uniq, inverse = torch.unique(flats, return_inverse=True)
        first = torch.full((len(uniq),), len(flats), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(len(flats)), "amin")
        new = flats[torch.sort(first).values][:budget - have]
        taken[new] = True
        chosen.append(new)
        have += len(new)
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long), walks


@register("phew")
class Phew(Compressor):
    """PHEW (Patil & Dovrolis 2021): keep the edges of biased random walks, ``P(i | j) ∝ Σ_k |W[i, j, k]|``
    forward, ``P(j | i) ∝ Σ_k |W[i, j, k]|`` backward, ``P(k | i, j) ∝ |W[i, j, k]|`` in a kernel; walks
    alternate between round-robin input and output units until ``round((1 - s)·N)`` weights are kept.
    Scores: the order of first selection (see the module docstring)."""

    Options = PhewOptions
    needs_data = False
    iterative = True
    scopes: ClassVar[tuple[str, ...]] = ("global",)

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        layers = walk_graph(model)
        params = dict(model.named_parameters())
        by_param = {(f"{layer.module}." if layer.module else "") + "weight": i for i, layer in enumerate(layers)}
        unknown = [n for n in names if n not in by_param]
        if unknown:
            raise ValueError(f"phew scores the weights of the Conv/Linear layers it walks through; not one of them: "
                             f"{unknown[:5]}; valid: prune_biases false and the module_type prunable rule")
        counted, offset, offsets = [-1] * len(layers), 0, {}
        for n in names:
            counted[by_param[n]] = offset
            offsets[n] = offset
            offset += params[n].numel()
        budget = kept_count(offset, sparsity)
        gen = estimator_generator(self.options.seed, torch.device("cpu"))
        order, walks = phew_order(layers, counted, offset, budget, self.options, gen)
        dtype = torch.float32 if budget <= 1 << 24 else torch.float64
        flat = torch.zeros(offset, dtype=dtype)
        flat[order] = torch.arange(budget, 0, -1, dtype=dtype)
        scores = {n: flat[offsets[n]:offsets[n] + params[n].numel()].reshape(params[n].shape).clone() for n in names}
        return ScoreMap(scores, {"walks": walks, "kept": budget})
