"""Structured pruning at initialization: structures scored from any criterion's element scores.

A *structure* is a set of weights that leave the network together, so that cutting them out gives a
smaller dense network (:func:`compact_model`) that computes exactly what the masked one computes:

- ``channel``: an output channel of a convolution, with everything that depends on it: its bias, the
  BatchNorm scale and shift of that channel, the input channels of the layers that read it, and, through
  residual additions, the same channel of every layer writing into that residual stream (the coupled
  channels form one *group*; the dependency graph comes from Torch-Pruning, Fang et al. CVPR 2023);
- ``neuron``: an output unit of a Linear layer (e.g. a ViT MLP hidden unit) with its bias and the input
  column of the next Linear layer;
- ``head``: an attention head: its rows of q, k and v (and their biases) and its columns of the output
  projection, for ``models.vit.Attention`` (packed ``qkv`` Linear) and for torchvision's
  ``nn.MultiheadAttention`` (packed ``in_proj_weight``).  A module takes part by the *head protocol*: a
  method ``head_layout()`` (parameter -> (dimension, owning head per index)) and ``prune_heads(keep)``.

Groups whose removal would not be exact are not offered: channels of a residual stream normalised by
LayerNorm (ViT's embedding width), a classifier's outputs, grouped convolutions, and layers inside an
attention module (their units are heads).

A structure's score aggregates the element scores of the scored weights it removes (``compressor.aggregate``):
``sum`` (default), ``mean``, ``l2`` (root of the sum of squares) or ``max``.  ``sum`` is the default because
the criteria's element scores estimate each weight's effect on the loss additively (first-order Taylor:
SNIP / grad-norm terms; diagonal second order: Fisher, FTS, HTS), so the sum is the same estimate for
removing the structure as a whole (the group Taylor importance of Molchanov et al., CVPR 2019).  Scores are
not normalised per group before a global ranking unless ``compressor.structure_norm`` is ``layer`` (each
group's structure scores divided by the sum of their absolute values).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compressors.base import classifier_name
from compressors.masks import Scores, kept_count, topk_mask
from utils.schema import Problem

KINDS = ("channel", "neuron", "head")
AGGREGATES = ("sum", "mean", "l2", "max")


def parse_kinds(structure: str) -> tuple[str, ...]:
    """``"head+neuron"`` -> ``("head", "neuron")``; ``"none"`` -> ``()``; a ValueError for anything else."""
    if structure == "none":
        return ()
    kinds = tuple(structure.split("+"))
    bad = [k for k in kinds if k not in KINDS]
    if bad or len(set(kinds)) != len(kinds) or not kinds:
        raise ValueError(f"structure must be 'none' or a '+'-joined combination of {', '.join(KINDS)} "
                         f"(each once), got {structure!r}")
    return kinds


def check_structure(structure: str, criterion: str, scopes: Sequence[str], problems: list[Problem],
                    path: str = "training.compressor.structure",
                    because: str = "it sets its own density per weight tensor") -> None:
    """Does ``structure`` (``compressor.structure``) fit criterion ``criterion`` with mask ``scopes``?
    Structures are ranked per layer or globally by aggregated element scores, so a criterion that selects
    weights itself (no ``"layer"`` in its scopes: it sets its own density per weight tensor, or its rounds
    rank weights globally; ``because`` says which) cannot drive them.  The spelling of ``structure`` itself
    is checked with the config (:func:`parse_kinds`)."""
    if structure != "none" and "layer" not in scopes:
        problems.append(Problem(path, f"'{criterion}' cannot drive structured pruning: {because}, which "
                                "structures do not follow; valid: 'none'"))


@dataclass
class Group:
    """``count`` structures of ``kind`` in one layer (for channels: one set of coupled channels).

    ``owners[param] = (dim, owner)``: along dimension ``dim`` of parameter ``param`` (a name of
    ``model.named_parameters()``), index ``i`` belongs to structure ``owner[i]`` (-1: to none).
    ``root`` is the module that defines the group (the layer whose output channels / neurons are the
    structures, or the attention module)."""

    kind: str
    root: str
    count: int
    owners: dict[str, tuple[int, torch.Tensor]]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.root, "structures": self.count,
                "parameters": sorted(self.owners)}


# ------------------------------------------------------------------------------------------ enumeration
def _is_helper_op(module: Any) -> bool:
    """Torch-Pruning's stand-ins for functional operations (add, reshape, concat, ...): they hold no weights."""
    return not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning")


def _head_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "head_layout") or isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention))}


def _mha_layout(m: nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    """Head layout of torchvision's packed attention: ``in_proj_weight`` rows [q | k | v] of width
    ``num_heads * head_dim``, ``out_proj.weight`` columns of the same width."""
    if getattr(m, "in_proj_weight", None) is None:
        raise ValueError("head structures need packed q/k/v projections (nn.MultiheadAttention with "
                         "kdim == vdim == embed_dim)")
    heads = torch.arange(m.num_heads).repeat_interleave(m.head_dim)
    rows = heads.repeat(3)
    layout = {"in_proj_weight": (0, rows), "out_proj.weight": (1, heads)}
    if m.in_proj_bias is not None:
        layout["in_proj_bias"] = (0, rows)
    return layout


def head_layout(module: nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    if hasattr(module, "head_layout"):
        return module.head_layout()
    return _mha_layout(module)


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    import torch_pruning as tp  # imported here: only structured runs need it

    with warnings.catch_warnings():  # it warns about bare parameters (class token, position embedding) it leaves alone
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _weight_groups(model: nn.Module, example: torch.Tensor, kinds: Sequence[str]) -> list[Group]:
    """Channel and neuron groups of ``model`` from Torch-Pruning's dependency graph (traced on a copy)."""
    want = {k for k in kinds if k in ("channel", "neuron")}
    if not want:
        return []
    names = {id(m): n for n, m in model.named_modules()}
    inside_attention = {id(sub) for m in _head_modules(model).values() for sub in m.modules()}
    classifier = classifier_name(model)
    with torch.random.fork_rng(devices=[]):
        graph = _dependency_graph(model, example)
    groups = []
    for tp_group in graph.get_all_groups(root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        items = list(tp_group.items)
        root = items[0].dep.target.module
        kind = "channel" if isinstance(root, nn.modules.conv._ConvNd) else "neuron"
        count = root.out_channels if kind == "channel" else root.out_features
        owners: dict[str, tuple[int, torch.Tensor]] = {}
        ok = kind in want
        for item in items:
            module, handler = item.dep.target.module, item.dep.handler.__name__
            if _is_helper_op(module):
                continue
            if id(module) in inside_attention or id(module) not in names:
                ok = False
                break
            out = handler.endswith("out_channels")
            roots = getattr(item, "root_idxs", None) or list(item.idxs)
            idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
            prefix = names[id(module)] + "." if names[id(module)] else ""
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                if names[id(module)] == classifier and out:
                    ok = False
                    break
                if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                    ok = False
                    break
                entries = [("weight", 0 if out else 1)] + ([("bias", 0)] if out and module.bias is not None else [])
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                entries = [(p, 0) for p in ("weight", "bias") if getattr(module, p, None) is not None]
            else:  # LayerNorm, attention, embeddings, ...: removing these units would not be exact
                ok = False
                break
            for pname, dim in entries:
                full = prefix + pname
                size = getattr(module, pname).shape[dim]
                dim_owner = owners[full][1] if full in owners else torch.full((size,), -1, dtype=torch.long)
                dim_owner[idxs] = torch.as_tensor(roots, dtype=torch.long)
                owners[full] = (dim, dim_owner)
        if ok and owners:
            groups.append(Group(kind, names[id(root)], int(count), owners))
    return groups


def _head_groups(model: nn.Module) -> list[Group]:
    groups = []
    for name, module in _head_modules(model).items():
        layout = head_layout(module)
        prefix = f"{name}." if name else ""
        count = int(max(int(o.max()) for _, o in layout.values()) + 1)
        groups.append(Group("head", name, count, {prefix + p: (d, o.clone()) for p, (d, o) in layout.items()}))
    return groups


class StructureSet:
    """The structures of one model (:func:`find_structures`) and the operations on them: aggregate element
    scores, select structures, expand the choice to weight masks, read it back from masks, cut the model."""

    def __init__(self, groups: list[Group], kinds: tuple[str, ...], example_shape: tuple[int, ...]) -> None:
        self.groups = list(groups)
        self.kinds, self.example_shape = kinds, tuple(example_shape)

    def parameters(self) -> list[str]:
        """Every parameter some structure reaches into (masks are kept for all of them)."""
        return sorted({p for g in self.groups for p in g.owners})

    def head_weights(self) -> list[str]:
        """The weight matrices of attention heads (q/k/v and output projections): scored as parts of heads."""
        return sorted({p for g in self.groups if g.kind == "head" for p, (dim, _) in g.owners.items()
                       if p.endswith("weight")})

    def counts(self) -> dict[str, int]:
        return {k: sum(g.count for g in self.groups if g.kind == k) for k in self.kinds}

    # ---------------------------------------------------------------------------------- scoring
    def structure_scores(self, scores: Scores, aggregate: str = "sum", norm: str = "none") -> list[torch.Tensor]:
        """One float64 score per structure of each group: the ``aggregate`` of the element scores of the
        scored weights the structure removes (see the module docstring).  Groups none of whose weights are
        scored get NaN scores (they are kept whole by :meth:`select`)."""
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        out = []
        for g in self.groups:
            total = torch.zeros(g.count, dtype=torch.float64)
            squares, count = torch.zeros_like(total), torch.zeros_like(total)
            peak = torch.full_like(total, float("-inf"))
            for pname, (dim, owner) in g.owners.items():
                if pname not in scores:
                    continue
                s = scores[pname].detach().to("cpu", torch.float64)
                rows = s.movedim(dim, 0).reshape(s.shape[dim], -1)
                valid = owner >= 0
                rows, own = rows[valid], owner[valid]
                total.index_add_(0, own, rows.sum(1))
                squares.index_add_(0, own, (rows * rows).sum(1))
                count.index_add_(0, own, torch.full((own.numel(),), float(rows.shape[1]), dtype=torch.float64))
                peak.scatter_reduce_(0, own, rows.amax(1), reduce="amax")
            if not bool((count > 0).any()):
                out.append(torch.full((g.count,), float("nan"), dtype=torch.float64))
                continue
            value = {"sum": total, "mean": total / count.clamp(min=1), "l2": squares.sqrt(), "max": peak}[aggregate]
            if norm == "layer":
                value = value / value.abs().sum().clamp(min=torch.finfo(torch.float64).tiny)
            elif norm != "none":
                raise ValueError(f"structure_norm must be 'none' or 'layer', got {norm!r}")
            out.append(value)
        return out

    # -------------------------------------------------------------------------------- selection
    def select(self, structure_scores: list[torch.Tensor], sparsity: float,
               scope: Literal["global", "layer"] = "global") -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Remove ``round(sparsity * N)`` structures (N: all structures for ``global``, each group's own for
        ``layer``), the lowest-scored first; ties go by position (group order, then index), so the choice is
        deterministic.  Every group keeps at least one structure: under ``global`` its best structure is
        reserved first and the rest are ranked together; the groups this rescued are recorded.  Groups
        without scores are kept whole."""
        keep: list[torch.Tensor] = [torch.zeros(g.count, dtype=torch.bool) for g in self.groups]
        scored = [i for i, s in enumerate(structure_scores) if not bool(torch.isnan(s).all())]
        unscored = sorted(set(range(len(self.groups))) - set(scored))
        for i in unscored:
            keep[i][:] = True
        unscored = [self.groups[i].root for i in unscored]
        rescued = []
        if scope == "layer":
            for i in scored:
                k = kept_count(self.groups[i].count, sparsity)
                if k == 0:
                    rescued.append(self.groups[i].root)
                keep[i] = topk_mask(structure_scores[i], max(k, 1))
        elif scope == "global":
            total = sum(self.groups[i].count for i in scored)
            k = max(kept_count(total, sparsity), len(scored))
            flat = torch.cat([structure_scores[i] for i in scored]) if scored else torch.zeros(0)
            plain = topk_mask(flat, k) if scored else flat.bool()
            reserved = torch.zeros_like(plain)
            offset = 0
            for i in scored:
                n = self.groups[i].count
                best = topk_mask(structure_scores[i], 1)
                reserved[offset:offset + n] = best
                if not bool((plain[offset:offset + n] & best).any()):
                    rescued.append(self.groups[i].root)
                offset += n
            rest = torch.where(reserved, torch.full_like(flat, float("-inf")), flat)
            chosen = reserved | (topk_mask(rest, k - len(scored)) & ~reserved)
            offset = 0
            for i in scored:
                keep[i] = chosen[offset:offset + self.groups[i].count].clone()
                offset += self.groups[i].count
        else:
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        return keep, self.record(keep, sparsity, rescued, unscored)

    def record(self, keep: list[torch.Tensor], target: float | None = None, rescued: Sequence[str] = (),
               unscored: Sequence[str] = ()) -> dict[str, Any]:
        """What a run records about its structures: per kind and per group, total and kept."""
        per_kind = {k: {"total": 0, "kept": 0} for k in self.kinds}
        layers = []
        for g, kv in zip(self.groups, keep):
            per_kind[g.kind]["total"] += g.count
            per_kind[g.kind]["kept"] += int(kv.sum())
            layers.append({"layer": g.root, "kind": g.kind, "total": g.count, "kept": int(kv.sum())})
        total = sum(v["total"] for v in per_kind.values())
        kept = sum(v["kept"] for v in per_kind.values())
        return {"kinds": list(self.kinds), "target_structure_sparsity": target,
                "structure_sparsity": (total - kept) / total if total else 0.0, "structures_total": total,
                "structures_kept": kept, "per_kind": per_kind, "groups": layers, "rescued_layers": list(rescued),
                "unscored_layers": list(unscored)}

    def shuffle(self, keep: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """The "shuffle" ablation for structures: each group's kept structures permuted at random."""
        return [k[torch.randperm(k.numel(), generator=generator)] for k in keep]

    # ------------------------------------------------------------------------------------ masks
    def masks(self, keep: list[torch.Tensor], params: dict[str, torch.Tensor]) -> Scores:
        """Weight masks of the chosen structures: ``{param: 0/1 float tensor}`` for every parameter a structure
        reaches into (a parameter in several groups, e.g. a conv's output and input channels, gets the
        product).  With these masks the network computes what :func:`compact_model` computes."""
        out: Scores = {}
        for g, kv in zip(self.groups, keep):
            for pname, (dim, owner) in g.owners.items():
                p = params[pname]
                along = torch.where(owner >= 0, kv[owner.clamp(min=0)], torch.ones_like(owner, dtype=torch.bool))
                shape = [1] * p.dim()
                shape[dim] = -1
                m = along.reshape(shape).to(p.device, torch.float32).expand_as(p)
                out[pname] = out[pname] * m if pname in out else m.clone()
        return out

    def keep_from_masks(self, masks: Scores) -> list[torch.Tensor]:
        """The structure choice behind ``masks`` (as :meth:`masks` made them): a structure is kept when any
        of its entries survives in any of its parameters."""
        keep = []
        for g in self.groups:
            alive = torch.zeros(g.count, dtype=torch.bool)
            for pname, (dim, owner) in g.owners.items():
                if pname not in masks:
                    alive[:] = True
                    continue
                m = masks[pname].detach().to("cpu")
                rows = m.movedim(dim, 0).reshape(m.shape[dim], -1).ne(0).any(1)
                valid = owner >= 0
                alive.index_put_((owner[valid],), rows[valid], accumulate=True)
            keep.append(alive)
        return keep

    # ---------------------------------------------------------------------------------- compact
    def compact(self, model: nn.Module, keep: list[torch.Tensor]) -> nn.Module:
        """A copy of ``model`` with the removed structures cut out (:func:`compact_model`)."""
        return compact_model(model, self, keep)

    def description(self, keep: list[torch.Tensor]) -> dict[str, Any]:
        """JSON-ready: which structures of which group are kept (enough to rebuild the compact architecture)."""
        return {"kinds": list(self.kinds), "example_shape": list(self.example_shape),
                "groups": [{"kind": g.kind, "layer": g.root, "total": g.count,
                            "kept": [int(i) for i in torch.nonzero(k).flatten()]}
                           for g, k in zip(self.groups, keep)]}

    def keep_from_description(self, description: dict[str, Any]) -> list[torch.Tensor]:
        by_root = {(d["kind"], d["layer"]): d for d in description["groups"]}
        keep = []
        for g in self.groups:
            d = by_root.get((g.kind, g.root))
            if d is None or int(d["total"]) != g.count:
                raise ValueError(f"the description does not match this model's structure {g.kind} {g.root}")
            k = torch.zeros(g.count, dtype=torch.bool)
            k[torch.as_tensor(d["kept"], dtype=torch.long)] = True
            keep.append(k)
        return keep


def find_structures(model: nn.Module, structure: str | Sequence[str], example_shape: Sequence[int]) -> StructureSet:
    """Enumerate the structures of ``model`` (``structure``: e.g. ``"channel"``, ``"head+neuron"``) for
    inputs of shape ``example_shape`` (without the batch dimension).  The model is left untouched (its
    dependency graph is traced on a copy).  A ValueError when it has no structure of a requested kind."""
    kinds = parse_kinds(structure) if isinstance(structure, str) else tuple(structure)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    work = copy.deepcopy(model).eval()
    example = torch.zeros(1, *example_shape, device=device)
    groups = _weight_groups(work, example, kinds) + (_head_groups(work) if "head" in kinds else [])
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups.sort(key=lambda g: (KINDS.index(g.kind), position[g.root]))  # kinds, then the model's module order
    missing = [k for k in kinds if not any(g.kind == k for g in groups)]
    if missing:
        raise ValueError(f"the model {type(model).__name__} has no {' or '.join(missing)} structures to prune "
                         f"(channels: convolution outputs outside LayerNorm streams; neurons: hidden Linear units; "
                         f"heads: attention modules)")
    return StructureSet(groups, kinds, tuple(example_shape))


# ---------------------------------------------------------------------------------------- compaction
class PrunedMultiheadAttention(nn.Module):
    """Self-attention with ``num_heads`` heads of ``head_dim`` (the inner width ``num_heads * head_dim`` may be
    smaller than ``embed_dim``): what :func:`compact_model` puts in place of a head-pruned
    ``nn.MultiheadAttention``; called like it (``(query, key, value, need_weights=...)`` -> ``(out, weights)``)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("PrunedMultiheadAttention supports unmasked attention only")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(inner)
        wq, wk, wv = w.split(inner)

        def heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            n, t, _ = x.shape
            return F.linear(x, weight, bias).reshape(n, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            attn = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
            weights = attn.mean(1) if average_attn_weights else attn
            out = F.dropout(attn, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(q.shape[0], -1, inner))
        return (out if self.batch_first else out.transpose(0, 1)), weights

    @torch.no_grad()
    def prune_heads(self, keep: Sequence[int]) -> None:
        keep = sorted(int(h) for h in keep)
        d, inner = self.head_dim, self.num_heads * self.head_dim
        cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
        rows = torch.cat([cols + part * inner for part in range(3)])
        self.in_proj_weight = nn.Parameter(self.in_proj_weight[rows].clone())
        if self.in_proj_bias is not None:
            self.in_proj_bias = nn.Parameter(self.in_proj_bias[rows].clone())
        out = nn.Linear(cols.numel(), self.embed_dim, bias=self.out_proj.bias is not None,
                        device=self.out_proj.weight.device, dtype=self.out_proj.weight.dtype)
        out.weight.copy_(self.out_proj.weight[:, cols])
        if out.bias is not None:
            out.bias.copy_(self.out_proj.bias)
        self.out_proj, self.num_heads = out, len(keep)

    @classmethod
    @torch.no_grad()
    def from_module(cls, m: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        new = cls(m.embed_dim, m.num_heads, m.head_dim, bias=m.in_proj_bias is not None, batch_first=m.batch_first,
                  dropout=m.dropout).to(m.in_proj_weight.device, m.in_proj_weight.dtype)
        new.in_proj_weight.copy_(m.in_proj_weight)
        if new.in_proj_bias is not None:
            new.in_proj_bias.copy_(m.in_proj_bias)
        new.out_proj.weight.copy_(m.out_proj.weight)
        if new.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias)
        return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def compact_model(model: nn.Module, structures: StructureSet, keep: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with every removed structure cut out: convolutions, BatchNorms and Linear layers
    become narrower (Torch-Pruning's pruning functions, over its dependency graph, so residual additions
    stay consistent), attention modules lose their removed heads.  With ``model``'s weights masked by
    ``structures.masks(keep, ...)`` both compute the same function (up to float rounding)."""
    import torch_pruning as tp

    work = copy.deepcopy(model)
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    weight_groups = [(g, k) for g, k in zip(structures.groups, keep) if g.kind != "head" and not bool(k.all())]
    if weight_groups:
        was_training = work.training
        work.eval()
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            graph = _dependency_graph(work, torch.zeros(1, *structures.example_shape, device=device))
        for g, k in weight_groups:
            root = work.get_submodule(g.root)
            fn = tp.prune_conv_out_channels if g.kind == "channel" else tp.prune_linear_out_channels
            removed = [int(i) for i in torch.nonzero(~k).flatten()]
            graph.get_pruning_group(root, fn, idxs=removed).prune()
        work.train(was_training)
    for g, k in zip(structures.groups, keep):
        if g.kind != "head" or bool(k.all()):
            continue
        module = work.get_submodule(g.root)
        if isinstance(module, nn.MultiheadAttention):
            module = PrunedMultiheadAttention.from_module(module)
            _replace(work, g.root, module)
        module.prune_heads([int(i) for i in torch.nonzero(k).flatten()])
    for p in work.parameters():
        p.grad = None
    return work
