"""A Vision Transformer for small images (``vit_small``: 32x32 inputs, 4x4 patches by default).

Pre-norm encoder blocks (LayerNorm -> multi-head self-attention -> residual; LayerNorm -> MLP with GELU
-> residual), a learnable class token and position embedding, a final LayerNorm and a linear head on
the class token.  q, k, v and the output projection are ordinary ``nn.Linear`` layers, so every weight
matrix is prunable by the Conv/Linear rule.  Defaults follow ViT-S (width 384, depth 12, 6 heads, MLP
ratio 4): 21,342,346 parameters with 10 classes at 32x32 / patch 4.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models import register


class Attention(nn.Module):
    """Multi-head self-attention with packed q, k, v rows in one Linear (``qkv``: rows [q | k | v], each
    ``heads`` blocks of ``head_dim``) and an output projection ``proj``.  ``head_dim`` defaults to
    ``dim // heads``; after :meth:`prune_heads` the inner width ``heads * head_dim`` is smaller than ``dim``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"vit: width {dim} is not divisible by heads {heads}")
            head_dim = dim // heads
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    def head_layout(self) -> dict[str, tuple[int, torch.Tensor]]:
        """The head-structure protocol of ``compressors.structures``: for each parameter (name relative to
        this module) the dimension along which heads lie and, per index of it, the head that owns it."""
        inner = self.heads * self.head_dim
        heads = torch.arange(self.heads).repeat_interleave(self.head_dim)  # owner of each row of q (k, v alike)
        rows = heads.repeat(3)
        return {"qkv.weight": (0, rows), "qkv.bias": (0, rows), "proj.weight": (1, heads[:inner])}

    @torch.no_grad()
    def prune_heads(self, keep: Sequence[int]) -> None:
        """Cut out every head not in ``keep`` (indices of the current heads): q, k, v rows and the matching
        columns of ``proj`` leave the module, which then computes the same as with those heads zeroed."""
        keep = sorted(int(h) for h in keep)
        d, inner = self.head_dim, self.heads * self.head_dim
        cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
        rows = torch.cat([cols + part * inner for part in range(3)])
        qkv = nn.Linear(self.qkv.in_features, rows.numel(), device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        qkv.weight.copy_(self.qkv.weight[rows])
        qkv.bias.copy_(self.qkv.bias[rows])
        proj = nn.Linear(cols.numel(), self.proj.out_features, device=self.proj.weight.device,
                         dtype=self.proj.weight.dtype)
        proj.weight.copy_(self.proj.weight[:, cols])
        proj.bias.copy_(self.proj.bias)
        self.qkv, self.proj, self.heads = qkv, proj, len(keep)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (see the module docstring)."""

    def __init__(self, num_classes: int, image_size: int, patch_size: int, in_channels: int = 3, dim: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"vit: image size {image_size} is not divisible by patch size {patch_size}")
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, int(dim * mlp_ratio), dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init()

    def _init(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.dropout(x)))
        return self.head(x[:, 0])


@register("vit_small")
def vit_small(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), patch_size: int = 4, dim: int = 384,
              depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0) -> nn.Module:
    """ViT-S for small images: 4x4 patches of a 32x32 input by default (see the module docstring)."""
    c, h, w = input_shape
    if h != w:
        raise ValueError(f"vit_small needs square inputs, got {tuple(input_shape)}")
    return ViT(num_classes, h, patch_size, in_channels=c, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
               dropout=dropout)
