"""Text renderings of pandas tables: GitHub Markdown (no extra dependency) and LaTeX (booktabs)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``df`` including its (multi-)index as leading columns."""
    if df.empty and not len(df.columns):
        return "_(no completed runs)_"
    keep_index = any(n is not None for n in df.index.names) or not isinstance(df.index, pd.RangeIndex)
    flat = df.reset_index() if keep_index else df
    if keep_index and df.index.names == [None]:
        flat = flat.rename(columns={flat.columns[0]: ""})
    head = [str(c) for c in flat.columns]
    rows = [[_cell(v) for v in row] for row in flat.itertuples(index=False)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(value: Any) -> str:
    text = _cell(value).replace("\\|", "|")
    bold = text.startswith(r"\textbf{") and text.endswith("}")
    inner = text[len(r"\textbf{"):-1] if bold else text
    inner = latex_escape(inner).replace("±", r"$\pm$").replace("–", "--")
    return rf"\textbf{{{inner}}}" if bold else inner


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs LaTeX tabular of ``df`` (index as leading columns); ``\\textbf{..}`` cells stay bold."""
    if df.empty:
        return "% no completed runs"
    flat = df.reset_index()
    body = flat.map(_latex_cell)
    body.columns = [latex_escape(str(c)) for c in flat.columns]
    n_keys = len(df.index.names)
    fmt = "l" * n_keys + "c" * (len(flat.columns) - n_keys)
    text = body.to_latex(index=False, escape=False, column_format=fmt)
    if caption:
        text = f"% {latex_escape(caption)}\n" + text
    return text.rstrip("\n")
