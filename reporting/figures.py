"""Figures of a report (matplotlib, Agg backend; every figure saved as PNG and PDF).

- accuracy vs sparsity per criterion, shaded ±std band, dense accuracy dashed (the paper's Figure 2);
- accuracy vs effective FLOPs and vs effective parameters of one forward pass (log scale), dense as a star;
- remaining density per layer for each criterion at one sparsity (layer collapse shows as 0);
- warmup vs no warmup per criterion (only when both exist);
- mask overlap (IoU of kept weights) between criteria, same seed and sparsity, chance level marked;
- stability of stochastic criteria: mask IoU across runs differing only in the estimator seed.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reporting.aggregate import metric_scale  # noqa: E402
from reporting.masks import chance_iou  # noqa: E402
from utils.io import write_bytes  # noqa: E402
from utils.naming import slug  # noqa: E402


def figure_stem(*parts: Any) -> str:
    """File stem of a figure: the non-empty parts joined by ``_``, made file-name safe."""
    return slug("_".join(str(p) for p in parts if p is not None and str(p) != ""))


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` into ``out_dir``; close the figure; return the paths.  Each is
    rendered in memory and written atomically (:func:`utils.io.write_bytes`): a failed write (a full disk)
    raises :class:`utils.io.WriteError` naming the file and leaves no partial file."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    try:
        fig.tight_layout()
        for path, options in zip(paths, ({"format": "png", "dpi": 150}, {"format": "pdf"})):
            buf = io.BytesIO()
            fig.savefig(buf, bbox_inches="tight", **options)
            write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return paths


LEGEND_INSIDE = 6   # legends of up to this many entries sit inside the axes
LEGEND_ROWS = 16    # rows per legend column beside the axes
LABEL_WIDTH = 44    # characters per legend line (longer variant labels are wrapped)


def place_legend(ax: plt.Axes, fig: plt.Figure, fontsize: float = 8) -> Any:
    """A legend that neither covers the data nor leaves the figure: inside the axes for a few entries;
    for more, beside them in as many columns as needed (labels wrapped), the figure widened (and made
    taller) to hold it.  Returns the legend (None without labelled artists)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    labels = [textwrap.fill(label, LABEL_WIDTH) for label in labels]
    if len(handles) <= LEGEND_INSIDE:
        return ax.legend(handles, labels, fontsize=fontsize)
    legend = ax.legend(handles, labels, fontsize=fontsize - 1, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0, ncol=math.ceil(len(handles) / LEGEND_ROWS))
    fig.canvas.draw()
    box = legend.get_window_extent()
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + box.width / fig.dpi + 0.4, max(height, box.height / fig.dpi + 1.2))
    return legend


def _label(row: pd.Series, with_warmup: bool = False) -> str:
    text = str(row["criterion"])
    if with_warmup:
        text += f" (warmup {row['warmup']})"
    if row.get("variant"):
        text += f" [{row['variant']}]"
    return text


def _dense_for(agg: pd.DataFrame, dataset: str, model: str, warmup: Any) -> pd.Series | None:
    dense = agg[agg["dense"] & (agg["dataset"] == dataset) & (agg["model"] == model)]
    if dense.empty:
        return None
    same = dense[dense["warmup"] == warmup]
    return (same if not same.empty else dense).iloc[0]


def accuracy_vs_sparsity(agg: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """One figure per (dataset, model, warmup): a line and ±std band per criterion, dense dashed."""
    paths: list[Path] = []
    scale = metric_scale(metric)
    pruned = agg[~agg["dense"]]
    for (dataset, model, warmup), block in pruned.groupby(["dataset", "model", "warmup"], sort=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for _, line in block.groupby(["criterion", "variant"], sort=True):
            line = line.sort_values("sparsity")
            x = line["sparsity"].to_numpy() * 100
            y = line["mean"].to_numpy() * scale
            sd = np.nan_to_num(line["std"].to_numpy(dtype=float)) * scale
            (h,) = ax.plot(x, y, marker="o", label=_label(line.iloc[0]))
            ax.fill_between(x, y - sd, y + sd, color=h.get_color(), alpha=0.2, linewidth=0)
        dense = _dense_for(agg, dataset, model, warmup)
        if dense is not None:
            ax.axhline(dense["mean"] * scale, color="black", linestyle="--", linewidth=1,
                       label=f"dense ({dense['mean'] * scale:.2f})")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"{metric}{' (%)' if scale == 100 else ''}")
        ax.set_title(f"{dataset} / {model}, warmup {warmup}: mean ± std over seeds")
        ax.grid(alpha=0.3)
        place_legend(ax, fig)
        paths += save(fig, out_dir, figure_stem("acc_vs_sparsity", dataset, model, f"warmup{warmup}"))
    return paths


COSTS = {"flops": ("flops_effective", "effective FLOPs per forward pass"),
         "params": ("params_effective", "effective parameters")}


def accuracy_vs_cost(agg: pd.DataFrame, metric: str, out_dir: Path, cost: str) -> list[Path]:
    """One figure per (dataset, model, warmup): the metric (±std) against the mean effective cost of each
    sparsity (``cost``: "flops" or "params", from results.json), a line per criterion, the dense run a star."""
    column, label = COSTS[cost]
    if agg.empty or column not in agg.columns:
        return []
    paths: list[Path] = []
    scale = metric_scale(metric)
    known = agg[agg[column].notna() & (agg[column] > 0)]
    pruned = known[~known["dense"]]
    for (dataset, model, warmup), block in pruned.groupby(["dataset", "model", "warmup"], sort=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for _, line in block.groupby(["criterion", "variant"], sort=True):
            line = line.sort_values(column)
            y = line["mean"].to_numpy() * scale
            sd = np.nan_to_num(line["std"].to_numpy(dtype=float)) * scale
            ax.errorbar(line[column].to_numpy(), y, yerr=sd, marker="o", capsize=3, label=_label(line.iloc[0]))
        dense = _dense_for(known, dataset, model, warmup)
        if dense is not None:
            ax.plot([dense[column]], [dense["mean"] * scale], marker="*", markersize=12, color="black",
                    linestyle="none", label=f"dense ({dense['mean'] * scale:.2f})")
        ax.set_xscale("log")
        ax.set_xlabel(label + (" (2 per multiply-add)" if cost == "flops" else ""))
        ax.set_ylabel(f"{metric}{' (%)' if scale == 100 else ''}")
        ax.set_title(f"{dataset} / {model}, warmup {warmup}: {metric} vs {cost}")
        ax.grid(alpha=0.3, which="both")
        place_legend(ax, fig)
        paths += save(fig, out_dir, figure_stem(f"acc_vs_{cost}", dataset, model, f"warmup{warmup}"))
    return paths


def warmup_comparison(agg: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """Per (dataset, model): criteria run with several warmups; solid = warmup > 0, dashed = 0."""
    paths: list[Path] = []
    scale = metric_scale(metric)
    pruned = agg[~agg["dense"]]
    for (dataset, model), block in pruned.groupby(["dataset", "model"], sort=True):
        both = [c for c, part in block.groupby("criterion") if part["warmup"].nunique() > 1]
        if not both:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, crit in enumerate(sorted(both)):
            for (warmup, variant), line in block[block["criterion"] == crit].groupby(["warmup", "variant"]):
                line = line.sort_values("sparsity")
                ax.plot(line["sparsity"] * 100, line["mean"] * scale, color=colors[i % len(colors)], marker="o",
                        linestyle="-" if warmup else "--",
                        label=f"{crit} warmup {warmup}" + (f" [{variant}]" if variant else ""))
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"{metric}{' (%)' if scale == 100 else ''}")
        ax.set_title(f"{dataset} / {model}: warmup (solid) vs none (dashed)")
        ax.grid(alpha=0.3)
        place_legend(ax, fig)
        paths += save(fig, out_dir, figure_stem("warmup", dataset, model))
    return paths


def layer_density(density: pd.DataFrame, sparsity: float, out_dir: Path) -> list[Path]:
    """``density`` rows: dataset, model, warmup, criterion, layer, layer_index, density (mean over seeds)."""
    paths: list[Path] = []
    for (dataset, model, warmup), block in density.groupby(["dataset", "model", "warmup"], sort=True):
        layers = block.sort_values("layer_index").drop_duplicates("layer")["layer"].tolist()
        fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(layers) + 2), 4.4))
        for crit, line in block.groupby("criterion", sort=True):
            line = line.set_index("layer").reindex(layers)
            ax.plot(range(len(layers)), line["density"], marker="o", markersize=3, label=str(crit))
        ax.axhline(1 - sparsity, color="gray", linestyle=":", linewidth=1, label=f"global density {1 - sparsity:g}")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([name.removesuffix(".weight") for name in layers], rotation=75, fontsize=6)
        ax.set_ylabel("remaining density")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{dataset} / {model}, warmup {warmup}: density per layer at sparsity {sparsity:g}")
        ax.grid(alpha=0.3)
        place_legend(ax, fig, fontsize=7)
        paths += save(fig, out_dir, figure_stem("layer_density", dataset, model, f"warmup{warmup}", f"s{sparsity:g}"))
    return paths


def overlap_heatmap(matrix: pd.DataFrame, sparsity: float, title: str, out_dir: Path, stem: str) -> list[Path]:
    """Criteria x criteria IoU matrix (NaN where never paired); chance level on the colour bar."""
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(max(6.0, 3.2 + 0.7 * n), max(4.8, 2.0 + 0.6 * n)))
    im = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_xticklabels(matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(matrix.index)
    chance = chance_iou(sparsity)
    for i in range(n):
        for j in range(n):
            v = matrix.iat[i, j]
            if not (isinstance(v, float) and math.isnan(v)):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 else "black", fontweight="bold" if v <= chance else "normal")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.axhline(chance, color="red", linewidth=2)
    bar.set_label("IoU of kept weights (red: chance)")
    ax.set_title(f"{title}\nchance (1-s)/(1+s) = {chance:.3f}; bold: at or below chance", fontsize=9)
    return save(fig, out_dir, stem)


def stability(stab: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``stab`` rows: dataset, model, warmup, criterion, sparsity, mean, std, pairs."""
    paths: list[Path] = []
    for (dataset, model, warmup), block in stab.groupby(["dataset", "model", "warmup"], sort=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        xs = np.array(sorted(block["sparsity"].unique()))
        crits = sorted(block["criterion"].unique())
        width = 0.8 / max(len(crits), 1)
        for i, crit in enumerate(crits):
            part = block[block["criterion"] == crit].set_index("sparsity").reindex(xs)
            ax.bar(np.arange(len(xs)) + (i - (len(crits) - 1) / 2) * width, part["mean"], width,
                   yerr=np.nan_to_num(part["std"].to_numpy(dtype=float)), capsize=3, label=str(crit))
        for k, s in enumerate(xs):
            ax.hlines(chance_iou(s), k - 0.45, k + 0.45, colors="red", linestyles="--",
                      label="chance (1-s)/(1+s)" if k == 0 else None)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([f"{s:g}" for s in xs])
        ax.set_xlabel("sparsity")
        ax.set_ylabel("mask IoU across estimator seeds")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset} / {model}, warmup {warmup}: stability (options.seed only differs)", fontsize=9)
        place_legend(ax, fig)
        paths += save(fig, out_dir, figure_stem("stability", dataset, model, f"warmup{warmup}"))
    return paths
