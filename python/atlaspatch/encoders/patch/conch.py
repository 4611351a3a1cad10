"""CONCH v1.5 (MahmoodLab): the patch encoder TITAN was trained on, 768-d features of 512 px patches at 20×.

The official file ``MahmoodLab/conchv1_5/pytorch_model_vision.bin`` (gated, CC-BY-NC-ND-4.0) is a plain state
dict of TITAN's ``EncoderWithAttentionalPooler`` / TRIDENT's ``CONCHVisionTower``, whose three children give the
key prefixes (read from TITAN ``conch_v1_5.py``, TRIDENT ``model_zoo/conchv1_5/conchv1_5.py`` and a third
loader doing the same strict load; not checked against the file itself, which is gated):

- ``trunk.*``: an iBOT-style ViT-L/16 with timm's key names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
  ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``), LayerNorm eps
  1e-6, LayerScale present (TRIDENT builds it with init_values=1.0, TITAN's ConchConfig says 1e-6: only the
  initial value differs, the file sets it), no ``fc_norm``/``head`` parameters. The trunk is built with the
  default ``img_size=224`` and the file loads into it strictly, so ``trunk.pos_embed`` is (1, 197, 1024);
- ``attn_pool_contrast.*``: ``AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)`` with
  ``query`` (1, 768), ``ln_k`` (1024), ``ln_q`` (768), ``to_q`` 768→768, ``to_kv`` 1024→1536, ``to_out``
  768→768, all linear layers without bias, LayerNorms eps 1e-5;
- ``ln_contrast``: LayerNorm(768), eps 1e-5.

Forward: all trunk tokens after the final norm → attentional pooler (single query) → ``ln_contrast``. At 448 px
the official trunk interpolates its 14×14 position grid to 28×28 on every call, DINO-style (bicubic with
``scale_factor=(28 + 0.1) / 14``); here the trunk is built at 448 and :func:`read_conch_checkpoint` does that
same interpolation once, so every other tensor of the official file loads unchanged with ``strict=True``.
Preprocessing: resize the shorter side to 448 (bilinear), centre crop 448, ImageNet mean/std.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...weights import WeightsSource
from .spec import IMAGENET_MEAN, IMAGENET_STD, PatchEncoderSpec, Preprocess, read_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

INPUT_SIZE = 448
PATCH_SIZE = 16
TRUNK_DIM = 1024
EMBED_DIM = 768
POOLER_HEADS = 8
POS_EMBED_KEY = "trunk.pos_embed"


@cache
def _classes() -> tuple[type, type]:
    """The pooler and tower classes, defined on first use so importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class AttentionalPooler(nn.Module):
        """CoCa attentional pooling: learned queries cross-attend to the layer-normed tokens."""

        def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
            super().__init__()
            self.heads = n_head
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.ln_k = nn.LayerNorm(context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H·D) → (B, H, L, D)
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, context_dim) → (B, n_queries, d_model)
            batch = tokens.shape[0]
            query = self.to_q(self.ln_q(self.query)).expand(batch, -1, -1)
            key, value = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
            pooled = F.scaled_dot_product_attention(self._split(query), self._split(key), self._split(value))
            return self.to_out(pooled.transpose(1, 2).flatten(2))

    class ConchV15(nn.Module):
        """``trunk`` (timm ViT-L/16) → ``attn_pool_contrast`` → ``ln_contrast``: (B, 3, 448, 448) → (B, 768)."""

        def __init__(self, trunk: nn.Module) -> None:
            super().__init__()
            self.trunk = trunk
            self.attn_pool_contrast = AttentionalPooler(EMBED_DIM, TRUNK_DIM, POOLER_HEADS, n_queries=1)
            self.ln_contrast = nn.LayerNorm(EMBED_DIM)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk.forward_features(images)  # CLS + patch tokens, after the trunk's final norm
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])

    return AttentionalPooler, ConchV15


def conch_v15_tower(trunk: nn.Module) -> nn.Module:
    """The official module layout around a ViT-L/16 ``trunk``: adds ``attn_pool_contrast`` and ``ln_contrast``."""
    return _classes()[1](trunk)


def build_conch_v15() -> nn.Module:
    """The tower with a timm ViT-L/16 trunk built for 448 px inputs (28×28 position grid)."""
    from .hf_models import build_timm_vit

    trunk = build_timm_vit(
        img_size=INPUT_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=TRUNK_DIM,
        depth=24,
        num_heads=16,
        mlp_hidden=4 * TRUNK_DIM,
        init_values=1.0,
    )
    return conch_v15_tower(trunk)


def dino_resample(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+N, C) → (1, 1+grid², C) as the official trunk interpolates: bicubic, ``scale_factor=(grid+0.1)/√N``."""
    import torch
    import torch.nn.functional as F

    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    if old * old != patch_pos.shape[1]:
        raise ValueError(f"{POS_EMBED_KEY} has {patch_pos.shape[1]} patch positions, not a square grid")
    if old == grid:
        return pos
    dim = pos.shape[-1]
    square = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    scale = (grid + 0.1) / old  # the DINO offset that makes the output exactly grid × grid
    square = F.interpolate(square, scale_factor=(scale, scale), mode="bicubic")
    if tuple(square.shape[-2:]) != (grid, grid):
        raise ValueError(f"cannot interpolate a {old}×{old} position grid to {grid}×{grid}")
    return torch.cat([cls_pos, square.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)], dim=1)


def read_conch_checkpoint(path: Path) -> dict[str, Any]:
    """The official state dict, its 14×14 position grid interpolated once to the 28×28 grid of a 448 px input."""
    state = read_state_dict(path)
    if POS_EMBED_KEY in state:
        state[POS_EMBED_KEY] = dino_resample(state[POS_EMBED_KEY], INPUT_SIZE // PATCH_SIZE)
    return state


SPECS: tuple[PatchEncoderSpec, ...] = (
    PatchEncoderSpec(
        name="conch_v15",
        dim=EMBED_DIM,
        preprocess=Preprocess(
            INPUT_SIZE, resize=INPUT_SIZE, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
        ),
        weights=WeightsSource(
            "conch_v15", "MahmoodLab/conchv1_5", "pytorch_model_vision.bin", gated=True, licence="CC-BY-NC-ND-4.0"
        ),
        architecture=build_conch_v15,
        checkpoint=read_conch_checkpoint,
        description="MahmoodLab CONCH v1.5 vision tower (TITAN's patch encoder): ViT-L/16 + attentional pooling",
        recommended=(512, 20),
        family="CONCH v1.5: timm ViT-L/16 + attentional pooler",
    ),
)
