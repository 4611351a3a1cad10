"""Encoders whose official weights are a Hugging Face ``transformers`` checkpoint, run as timm ViTs.

The project needs no ``transformers`` at run time: each architecture is a timm ``VisionTransformer`` and the
official ``ViTModel`` / ``Dinov2Model`` / DINOv2-with-registers file is converted key by key when it is read
(separate q/k/v → fused ``qkv``, ``layer_scale*.lambda1`` → ``ls*.gamma``, ``weights_in``/``weights_out`` →
packed SwiGLU ``fc1``/``fc2``, embeddings → ``cls_token``/``reg_token``/``pos_embed``).

Position embeddings are made "interpolation-free": the timm model is built at the input size the preprocessing
produces. For ``Dinov2Model`` files whose grid differs, the converter resamples it once, exactly as current
``transformers`` does on every forward (bicubic to the target size, ``align_corners=False``, in float32);
``ViTModel`` (used without ``interpolate_pos_encoding``) and the Hibou code run at their native grid, so there a
different grid is an error. For registers models the class-token position is folded into ``cls_token`` (timm
adds ``pos_embed`` to patch tokens only), which is what DINOv2-with-registers computes: CLS+pos₀, registers
without position, patches+pos.

Facts (sources: HF config.json / preprocessor_config.json / file listings, TRIDENT ``load.py``, AtlasPatch
``models/patch/{phikon,hibou}.py``, kaiko-ai/Midnight README):

- ``phikon_v1``: ``owkin/phikon`` ships ``model.safetensors`` (and ``pytorch_model.bin``); ViTModel B/16, 224,
  ``layer_norm_eps`` 1e-6 (current config.json); processor: resize (224, 224) bilinear, ImageNet; CLS of
  ``last_hidden_state`` (after the final layernorm). Not gated, Owkin non-commercial licence.
- ``phikon_v2``: ``owkin/phikon-v2`` ships ``model.safetensors`` (1.21 GB); Dinov2Model L/16; CLS. Not gated,
  Owkin non-commercial licence. Assumed: plain GELU MLP (``use_swiglu_ffn`` false); the position grid is
  whatever the file holds (resampled to 14×14 if needed). Preprocess as TRIDENT: resize 224 + centre crop 224.
- ``hibou_b`` / ``hibou_l``: ``histai/hibou-b`` / ``histai/hibou-L``, custom HF code ``Dinov2ModelWithRegisters``,
  ``model.safetensors``; hibou-b config: 224, patch 14, 4 registers, SwiGLU FFN, layerscale, eps 1e-6.
  Assumed for hibou-L: the same recipe at ViT-L (hibou's ``build_model`` defaults: swiglufused, 4 registers,
  224) and the register key ``embeddings.register_tokens`` (as in transformers' Dinov2WithRegisters).
  Pooler output = layernorm(CLS). Preprocess as TRIDENT: resize (224, 224) bicubic, Hibou mean/std.
- ``midnight``: ``kaiko-ai/midnight`` (Midnight-12k), Dinov2Model g/14, 40 blocks, 1536-d, SwiGLU FFN, MIT,
  not gated, ``model.safetensors`` (~4.5 GB); CLS ⊕ mean of patch tokens = 3072; resize 224 + centre crop 224,
  mean/std 0.5.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...weights import WeightsSource
from .spec import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, PatchEncoderSpec, Preprocess, read_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
OWKIN_LICENCE = "Owkin non-commercial"


# --- timm ViT, built without paying for an initialisation the official weights overwrite anyway ---------------


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of DINOv2's SwiGLU FFN: two thirds of ``dim * mlp_ratio``, rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def random_init(module: nn.Module) -> nn.Module:
    """Cheap random init: N(0, 0.02) for matrices and embeddings, zero biases, unit norm weights / layer scales."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim > 1:
                param.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return module


def build_timm_vit(
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_hidden: int,
    swiglu: bool = False,
    init_values: float | None = None,
    reg_tokens: int = 0,
) -> nn.Module:
    """A timm ViT (CLS token, LayerNorm eps 1e-6, no classifier) at a fixed input size.

    ``mlp_hidden`` is the width of ``mlp.fc1``'s output: for SwiGLU that is the packed gate+value width.
    Built on the meta device and materialised with :func:`random_init` (timm's own init of a ViT-g takes
    longer than reading its weights).
    """
    import torch
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    extra: dict[str, Any] = {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU} if swiglu else {}
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=(mlp_hidden + 0.5) / embed_dim,  # timm takes int(embed_dim * ratio) == mlp_hidden
        qkv_bias=True,
        init_values=init_values,
        class_token=True,
        reg_tokens=reg_tokens,
        no_embed_class=reg_tokens > 0,
        num_classes=0,
        global_pool="token",
        weight_init="skip",
        device="meta",
        **extra,
    )
    return random_init(vit.to_empty(device="cpu"))


# --- transformers → timm state dict ------------------------------------------------------------------------------

_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),  # ViTModel
        (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
        (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),  # Dinov2Model
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.(?:fc1|weights_in)\.", r"blocks.\1.mlp.fc1."),  # GELU MLP | SwiGLU
        (r"^encoder\.layer\.(\d+)\.mlp\.(?:fc2|weights_out)\.", r"blocks.\1.mlp.fc2."),
        (r"^layernorm\.", "norm."),
    )
)
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
_DROPPED = re.compile(r"^(pooler\.|embeddings\.mask_token$)")  # ViT pooler (unused: CLS is taken), MIM token
_WRAPPERS = ("vit.", "dinov2.")  # base-model prefix when a task model (…ForImageClassification) was saved


def _renamed(key: str) -> str:
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key  # unknown: kept, so the strict load names it


def _patch_grid(pos: torch.Tensor) -> int:
    positions = pos.shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"position embeddings for {positions} patches are not a square grid")
    return side


def resample_patch_grid(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+N, C) → (1, 1+grid², C) the way transformers' Dinov2 interpolates: bicubic to size, in float32."""
    import torch
    import torch.nn.functional as F

    old = _patch_grid(pos)
    if old == grid:
        return pos
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    square = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    square = F.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, square.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)], dim=1)


def _embeddings(state: dict[str, Any], grid: int, registers: bool, interpolate: bool) -> dict[str, Any]:
    cls_token = state.pop("embeddings.cls_token")
    pos = state.pop("embeddings.position_embeddings")
    if interpolate:
        pos = resample_patch_grid(pos, grid)
    elif _patch_grid(pos) != grid:
        raise ValueError(f"position embeddings are a {_patch_grid(pos)}² grid, this model runs at {grid}²")
    if not registers:
        return {"cls_token": cls_token, "pos_embed": pos}
    return {
        "cls_token": cls_token + pos[:, :1],  # timm adds pos_embed to the patch tokens only
        "pos_embed": pos[:, 1:],
        "reg_token": state.pop("embeddings.register_tokens"),
    }


def from_transformers(
    state: dict[str, Any], grid: int, registers: bool = False, interpolate: bool = False
) -> dict[str, Any]:
    """A transformers ViTModel / Dinov2Model (with registers) state dict → timm ``VisionTransformer`` keys.

    ``grid``: the patch grid the timm model runs at; ``interpolate``: resample a different grid (Dinov2Model).
    """
    import torch

    for prefix in _WRAPPERS:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not _DROPPED.match(key)}
    converted = _embeddings(state, grid, registers, interpolate)
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault((layer, kind), {})[which] = value
        else:
            converted[_renamed(key)] = value
    for (layer, kind), parts in qkv.items():
        if len(parts) != 3:
            raise ValueError(f"layer {layer} has {sorted(parts)} attention {kind}s, expected query, key and value")
        converted[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return converted


def read_transformers_checkpoint(
    path: Path, grid: int, registers: bool = False, interpolate: bool = False
) -> dict[str, Any]:
    return from_transformers(read_state_dict(path), grid, registers, interpolate)


# --- heads ---------------------------------------------------------------------------------------------------


def _cls_head(trunk: nn.Module) -> nn.Module:
    from .heads import vit_cls

    return vit_cls(trunk)


def _cls_mean_head(trunk: nn.Module) -> nn.Module:
    from .heads import vit_cls_mean

    return vit_cls_mean(trunk)


# --- the table -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Vit:
    """Shape of a transformers ViT/DINOv2 checkpoint, as a timm ViT at ``img_size``."""

    patch: int
    dim: int
    depth: int
    heads: int
    swiglu: bool = False
    layerscale: bool = True  # DINOv2 has LayerScale (ls*.gamma); ViTModel does not
    registers: int = 0
    img_size: int = 224

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    @property
    def interpolates(self) -> bool:
        """Dinov2Model resamples its position grid to the input; ViTModel and the Hibou code do not."""
        return self.layerscale and self.registers == 0

    @property
    def mlp_hidden(self) -> int:
        return 2 * swiglu_hidden(self.dim) if self.swiglu else 4 * self.dim

    def build(self) -> nn.Module:
        return build_timm_vit(
            img_size=self.img_size,
            patch_size=self.patch,
            embed_dim=self.dim,
            depth=self.depth,
            num_heads=self.heads,
            mlp_hidden=self.mlp_hidden,
            swiglu=self.swiglu,
            init_values=1.0 if self.layerscale else None,
            reg_tokens=self.registers,
        )


def _hf_vit(
    name: str,
    repo_id: str,
    shape: _Vit,
    *,
    dim: int,
    preprocess: Preprocess,
    description: str,
    family: str,
    licence: str,
    gated: bool = False,
    pooling: str = "cls",
    filename: str = "model.safetensors",
    recommended: tuple[int, int] = (224, 20),
) -> PatchEncoderSpec:
    return PatchEncoderSpec(
        name=name,
        dim=dim,
        preprocess=preprocess,
        weights=WeightsSource(name, repo_id, filename, gated=gated, licence=licence),
        architecture=shape.build,
        checkpoint=partial(
            read_transformers_checkpoint, grid=shape.grid, registers=shape.registers > 0, interpolate=shape.interpolates
        ),
        head=_cls_mean_head if pooling == "cls_mean" else _cls_head,
        description=description,
        recommended=recommended,
        family=family,
    )


SPECS: tuple[PatchEncoderSpec, ...] = (
    _hf_vit(
        "phikon_v1",
        "owkin/phikon",
        _Vit(patch=16, dim=768, depth=12, heads=12, layerscale=False),
        dim=768,
        preprocess=Preprocess(224, resize=224, square=True, interpolation="bilinear"),
        description="Owkin Phikon (iBOT ViT-B/16, 40M TCGA tiles); CLS token",
        family="transformers ViTModel B/16 → timm",
        licence=OWKIN_LICENCE,
    ),
    _hf_vit(
        "phikon_v2",
        "owkin/phikon-v2",
        _Vit(patch=16, dim=1024, depth=24, heads=16),
        dim=1024,
        preprocess=Preprocess(224, resize=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
        description="Owkin Phikon-v2 (DINOv2 ViT-L/16, 460M tiles); CLS token",
        family="transformers Dinov2 L/16 → timm",
        licence=OWKIN_LICENCE,
    ),
    _hf_vit(
        "hibou_b",
        "histai/hibou-b",
        _Vit(patch=14, dim=768, depth=12, heads=12, swiglu=True, registers=4),
        dim=768,
        preprocess=Preprocess(224, resize=224, square=True, interpolation="bicubic", mean=HIBOU_MEAN, std=HIBOU_STD),
        description="HistAI Hibou-B (DINOv2 ViT-B/14, 4 registers); pooler output = normed CLS",
        family="transformers Dinov2+registers B/14 → timm",
        licence="Apache-2.0",
    ),
    _hf_vit(
        "hibou_l",
        "histai/hibou-L",
        _Vit(patch=14, dim=1024, depth=24, heads=16, swiglu=True, registers=4),
        dim=1024,
        preprocess=Preprocess(224, resize=224, square=True, interpolation="bicubic", mean=HIBOU_MEAN, std=HIBOU_STD),
        description="HistAI Hibou-L (DINOv2 ViT-L/14, 4 registers); pooler output = normed CLS",
        family="transformers Dinov2+registers L/14 → timm",
        licence="Apache-2.0",
        gated=True,
    ),
    _hf_vit(
        "midnight",
        "kaiko-ai/midnight",
        _Vit(patch=14, dim=1536, depth=40, heads=24, swiglu=True),
        dim=3072,
        preprocess=Preprocess(224, resize=224, interpolation="bilinear", mean=HALF_MEAN, std=HALF_STD),
        description="kaiko.ai Midnight-12k (DINOv2 ViT-g/14, TCGA); CLS ⊕ mean of patch tokens",
        family="transformers Dinov2 g/14 → timm",
        licence="MIT",
        pooling="cls_mean",
    ),
)
