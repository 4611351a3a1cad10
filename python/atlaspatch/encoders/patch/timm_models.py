"""Pathology ViT patch encoders built with timm, one table row per encoder.

Every architecture is ``timm.create_model(<arch>, pretrained=False, ...)`` with exactly the arguments the authors
publish, so the official weights file loads with ``strict=True``; nothing is ever downloaded by timm. Model
arguments, file names and transforms were read from TRIDENT (``trident/patch_encoder_models/load.py``), the
official repositories (``mahmoodlab/UNI`` ``get_encoder.py``, ``kaiko-ai/towards_large_pathology_fms``
``hubconf.py``), AtlasPatch (``atlas_patch/models/patch/*.py``) and the Hugging Face model pages; what could not be
confirmed is said next to the entry it concerns.

``architecture()`` skips timm's model-wide weight initialisation (``weight_init="skip"``; the blocks still
initialise themselves, the token embeddings are filled by :func:`init_token_embeddings`): a random init is all a
module about to receive a checkpoint needs, and a ViT-g builds in a third of the time.
torch and timm are imported inside the factories only, so importing this module is free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...weights import WeightsSource
from .spec import HALF_MEAN, HALF_STD, PatchEncoderSpec, Preprocess, read_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

# Bioptimus' normalisation (H-optimus-0/1 config.json, H0-mini pretrained_cfg)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

KAIKO_SUFFIX = "kaiko_ai_towards_large_pathology_fms"


# --- architectures -----------------------------------------------------------------------------------------------


def timm_vit(arch: str, *, swiglu: bool = False, **kwargs: Any) -> Callable[[], nn.Module]:
    """A factory for ``timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)``.

    ``swiglu`` adds the packed SwiGLU MLP with SiLU (UNI2-h, Virchow, Virchow2, H0-mini). ``dynamic_img_size`` does
    not change the outputs at the native input size; it only lets the model accept other sizes.
    """

    def build() -> nn.Module:
        import timm
        import torch

        extra: dict[str, Any] = {}
        if swiglu:
            extra = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
        model = timm.create_model(
            arch, pretrained=False, num_classes=0, dynamic_img_size=True, weight_init="skip", **extra, **kwargs
        )
        init_token_embeddings(model)
        return model

    return build


def init_token_embeddings(model: nn.Module) -> None:
    """What ``weight_init="skip"`` leaves out: timm creates these three with ``torch.empty`` and fills them in
    ``init_weights`` only (the blocks initialise themselves). Same values as timm: N(0, 0.02) truncated, N(0, 1e-6)."""
    from torch import nn

    if getattr(model, "pos_embed", None) is not None:
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
    for name in ("cls_token", "reg_token"):
        if getattr(model, name, None) is not None:
            nn.init.normal_(getattr(model, name), std=1e-6)


# --- heads (heads.py imports torch, so it is imported when a model is built, not with this module) -----------------


def cls_head(module: nn.Module) -> nn.Module:
    """CLS token of the final (normed) tokens."""
    from .heads import vit_cls

    return vit_cls(module)


def cls_mean_head(module: nn.Module) -> nn.Module:
    """CLS ⊕ mean of the patch tokens (register tokens excluded: ``tokens[:, num_prefix_tokens:]``)."""
    from .heads import vit_cls_mean

    return vit_cls_mean(module)


# --- checkpoint readers ------------------------------------------------------------------------------------------


def with_pos_embed_grid(grid: int) -> Callable[[Path], dict[str, torch.Tensor]]:
    """Reader that brings a ``no_embed_class`` ViT's ``pos_embed`` to a ``grid``×``grid`` patch grid.

    The resampling is timm's own (``resample_abs_pos_embed``, bicubic, antialiased): the one a ``dynamic_img_size``
    model applies at every forward pass, so loading a 518-px checkpoint into a 224-px model gives the very features
    the 518-px model gives on 224-px input. A file already on that grid is returned untouched.
    """

    def read(path: Path) -> dict[str, torch.Tensor]:
        state = read_state_dict(path)
        pos_embed = state.get("pos_embed")
        if pos_embed is not None and pos_embed.ndim == 3 and pos_embed.shape[1] != grid * grid:
            from timm.layers import resample_abs_pos_embed

            side = math.isqrt(pos_embed.shape[1])
            if side * side == pos_embed.shape[1]:  # anything else is left for the strict load to report
                state["pos_embed"] = resample_abs_pos_embed(
                    pos_embed.float(), new_size=[grid, grid], old_size=[side, side], num_prefix_tokens=0
                ).to(pos_embed.dtype)
        return state

    return read


# --- one helper per family ---------------------------------------------------------------------------------------


def vit_spec(
    name: str,
    dim: int,
    weights: WeightsSource,
    architecture: Callable[[], nn.Module],
    preprocess: Preprocess,
    *,
    head: Callable[[nn.Module], nn.Module] = cls_head,
    checkpoint: Callable[[Path], dict[str, Any]] | None = None,
    recommended: tuple[int, int],
    family: str,
    description: str,
) -> PatchEncoderSpec:
    extra = {"checkpoint": checkpoint} if checkpoint is not None else {}
    return PatchEncoderSpec(
        name=name,
        dim=dim,
        preprocess=preprocess,
        weights=weights,
        architecture=architecture,
        head=head,
        description=description,
        recommended=recommended,
        family=family,
        **extra,
    )


def lunit_spec(name: str, arch: str, patch: int) -> PatchEncoderSpec:
    """Lunit DINO ViT-S (Kang et al., CVPR 2023) through the ``1aurent`` timm ports: CLS token, 384-d.

    Preprocessing is the port's timm pretrained config, which AtlasPatch and TRIDENT both apply through
    ``resolve_data_config``: bicubic, crop_pct 0.9 (Resize 248 → CenterCrop 224), ImageNet mean/std. The port's
    config.json is timm's ``vit_small_patch8_224.dino`` config with the tag renamed (ImageNet statistics; Lunit's
    own training statistics (0.7032, 0.5361, 0.6610)/(0.2172, 0.2608, 0.2072) are *not* in it), and AtlasPatch's
    ``lunit_vit_small_patch8_dino`` features — MOOZY's input — were extracted with that config.
    """
    repo = f"1aurent/{arch}.lunit_dino"
    return vit_spec(
        name,
        384,
        WeightsSource(name, repo, "model.safetensors", licence="Lunit non-commercial"),
        timm_vit(arch, img_size=224),
        Preprocess(224, resize=248, interpolation="bicubic"),
        recommended=(224, 20),
        family=f"timm ViT-S/{patch}",
        description=f"Lunit DINO ViT-S/{patch} (1aurent timm port); CLS token",
    )


def kaiko_spec(
    name: str,
    arch: str,
    dim: int,
    family: str,
    *,
    timm_arch: str | None = None,
    checkpoint: Callable[[Path], dict[str, Any]] | None = None,
) -> PatchEncoderSpec:
    """kaiko.ai "Towards large-scale training of pathology foundation models" ViTs (1aurent timm ports): CLS token.

    ``arch`` names the port (``1aurent/<arch>.kaiko_ai_towards_large_pathology_fms``), ``timm_arch`` the timm
    architecture when it differs. Transform from the ports' model cards and TRIDENT: Resize 224 (bilinear) →
    CenterCrop 224, mean/std 0.5.
    """
    return vit_spec(
        name,
        dim,
        WeightsSource(name, f"1aurent/{arch}.{KAIKO_SUFFIX}", "model.safetensors", licence="kaiko non-commercial"),
        timm_vit(timm_arch or arch, img_size=224),
        Preprocess(224, resize=224, mean=HALF_MEAN, std=HALF_STD),
        checkpoint=checkpoint,
        recommended=(256, 20),
        family=family,
        description=f"kaiko.ai {family.removeprefix('timm ')} (1aurent timm port); CLS token",
    )


def hoptimus_spec(name: str, repo: str, gated: bool, licence: str, label: str) -> PatchEncoderSpec:
    """Bioptimus H-optimus ViT-g/14 with 4 registers: CLS token (``global_pool="token"``), 1536-d.

    Transform as AtlasPatch has it: Resize((224, 224)) (both sides), bioptimus mean/std.
    """
    return vit_spec(
        name,
        1536,
        WeightsSource(name, repo, "pytorch_model.bin", gated=gated, licence=licence),
        timm_vit("vit_giant_patch14_reg4_dinov2", img_size=224, init_values=1e-5, global_pool="token"),
        Preprocess(224, resize=224, square=True, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD),
        recommended=(224, 20),
        family="timm ViT-g/14 reg4",
        description=f"{label} (Bioptimus): ViT-g/14 DINOv2, 1.1B params; CLS token",
    )


def virchow_spec(name: str, repo: str, licence: str, reg_tokens: int, label: str) -> PatchEncoderSpec:
    """Paige Virchow / Virchow2: ViT-H/14 with SwiGLU; CLS ⊕ mean of the patch tokens (registers excluded), 2560-d.

    Transform: the hub config's (bicubic, crop_pct 1.0) = Resize 224 bicubic → 224, ImageNet mean/std.
    """
    registers = {"reg_tokens": reg_tokens} if reg_tokens else {}
    return vit_spec(
        name,
        2560,
        WeightsSource(name, repo, "pytorch_model.bin", gated=True, licence=licence),
        timm_vit("vit_huge_patch14_224", swiglu=True, img_size=224, init_values=1e-5, mlp_ratio=5.3375, **registers),
        Preprocess(224, resize=224, interpolation="bicubic"),
        head=cls_mean_head,
        recommended=(224, 20),
        family="timm ViT-H/14 SwiGLU" + (f" reg{reg_tokens}" if reg_tokens else ""),
        description=f"{label} (Paige): ViT-H/14 DINOv2; CLS ⊕ mean of patch tokens",
    )


# --- the table ---------------------------------------------------------------------------------------------------

SPECS: tuple[PatchEncoderSpec, ...] = (
    # UNI: verified in mahmoodlab/UNI get_encoder.py (file pytorch_model.bin, strict timm load, Resize 224 →
    # CenterCrop 224 with torchvision's default bilinear, ImageNet) and TRIDENT. Repo id in lower case, as the
    # card's timm hub prefix (hf-hub:MahmoodLab/uni) writes it, so a cache filled by timm/TRIDENT is reused.
    vit_spec(
        "uni_v1",
        1024,
        WeightsSource("uni_v1", "MahmoodLab/uni", "pytorch_model.bin", gated=True, licence="CC-BY-NC-ND-4.0"),
        timm_vit("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5),
        Preprocess(224, resize=224),
        recommended=(256, 20),
        family="timm ViT-L/16",
        description="UNI (Mahmood Lab): ViT-L/16 DINOv2 on 100M patches; CLS token",
    ),
    # UNI2-h: same sources as UNI (ViT-h/14-reg8, pytorch_model.bin, strict). Licence assumed the same as UNI's.
    vit_spec(
        "uni_v2",
        1536,
        WeightsSource("uni_v2", "MahmoodLab/UNI2-h", "pytorch_model.bin", gated=True, licence="CC-BY-NC-ND-4.0"),
        timm_vit(
            "vit_giant_patch14_224",
            swiglu=True,
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            no_embed_class=True,
            reg_tokens=8,
        ),
        Preprocess(224, resize=224),
        recommended=(256, 20),
        family="timm ViT-H/14 SwiGLU reg8",
        description="UNI2-h (Mahmood Lab): ViT-H/14 DINOv2 on 200M+ patches; CLS token",
    ),
    # Virchow: arguments, file (pytorch_model.bin) and the CLS ⊕ mean(tokens[1:]) head from TRIDENT and the model
    # card; licence Apache-2.0 as the card states it (gated).
    virchow_spec("virchow_v1", "paige-ai/Virchow", "Apache-2.0", 0, "Virchow"),
    # Virchow2: as Virchow plus 4 registers; the head's mean is over tokens[5:] (CLS + 4 registers excluded).
    virchow_spec("virchow_v2", "paige-ai/Virchow2", "CC-BY-NC-ND-4.0", 4, "Virchow2"),
    # H-optimus-0: pytorch_model.bin seen in the repository's file list; config.json gives the architecture and
    # mean/std. Apache-2.0, and gated: models.md calls it ungated, but recent users report a 401 without a token
    # (automatic approval), so the licence step is shown. H-optimus-1: file name assumed the same as H-optimus-0
    # (TRIDENT names pytorch_model.bin for both); its licence is not checked, hence left blank.
    hoptimus_spec("h_optimus_0", "bioptimus/H-optimus-0", True, "Apache-2.0", "H-optimus-0"),
    hoptimus_spec("h_optimus_1", "bioptimus/H-optimus-1", True, "", "H-optimus-1"),
    # H0-mini: ViT-B/14 reg4 distilled from H-optimus-0, SwiGLU (mlp_ratio 5.33334), init_values 1e-5 — arguments
    # as the config's model_args are quoted by downstream code; not read from the (gated) repository itself. The
    # file name is pytorch_model.bin as TRIDENT/BREST use it (other code names model.safetensors; the repository may
    # ship both). Transform assumed Resize 224 bicubic → 224 with bioptimus mean/std (AtlasPatch resolves the hub
    # pretrained_cfg, whose mean/std are bioptimus'; its crop_pct was not seen). Licence not checked.
    vit_spec(
        "h0_mini",
        1536,
        WeightsSource("h0_mini", "bioptimus/H0-mini", "pytorch_model.bin", gated=True),
        timm_vit("vit_base_patch14_reg4_dinov2", swiglu=True, img_size=224, init_values=1e-5, mlp_ratio=5.33334),
        Preprocess(224, resize=224, interpolation="bicubic", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD),
        head=cls_mean_head,
        recommended=(224, 20),
        family="timm ViT-B/14 reg4 SwiGLU",
        description="H0-mini (Bioptimus): ViT-B/14 distilled from H-optimus-0; CLS ⊕ mean of patch tokens",
    ),
    # Prov-GigaPath tile encoder: the repository's config.json model_args / TRIDENT (patch 16, depth 40, SwiGLU via
    # vit_giant_patch14_dinov2's defaults); pytorch_model.bin; Resize 256 bicubic → CenterCrop 224, ImageNet.
    vit_spec(
        "prov_gigapath",
        1536,
        WeightsSource(
            "prov_gigapath", "prov-gigapath/prov-gigapath", "pytorch_model.bin", gated=True, licence="Apache-2.0"
        ),
        timm_vit(
            "vit_giant_patch14_dinov2",
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            mlp_ratio=5.33334,
        ),
        Preprocess(224, resize=256, interpolation="bicubic"),
        recommended=(256, 20),
        family="timm ViT-g/16 SwiGLU",
        description="Prov-GigaPath tile encoder (Microsoft/Providence): ViT-g DINOv2 on 1.3B tiles; CLS token",
    ),
    # Lunit DINO ViT-S (MOOZY's backbone is the patch-8 one): 1aurent ports ship model.safetensors + config.json.
    lunit_spec("lunit_vit_small_patch8_dino", "vit_small_patch8_224", 8),
    lunit_spec("lunit_vit_small_patch16_dino", "vit_small_patch16_224", 16),
    # kaiko.ai ViTs (not in AtlasPatch; names ours). Architectures as kaiko's hubconf.py builds them; the ports ship
    # model.safetensors. The ViT-L/14 port was renamed from ...reg4_dinov2... to ...reg4_224...; kaiko's original
    # checkpoint is on the 518-px grid (37×37 pos_embed) and whether the port kept that grid was not seen, so the
    # model is built at 224 and the reader resamples a 37×37 pos_embed exactly as the 518-px dynamic model would.
    kaiko_spec("kaiko_vits16", "vit_small_patch16_224", 384, "timm ViT-S/16"),
    kaiko_spec("kaiko_vits8", "vit_small_patch8_224", 384, "timm ViT-S/8"),
    kaiko_spec("kaiko_vitb16", "vit_base_patch16_224", 768, "timm ViT-B/16"),
    kaiko_spec("kaiko_vitb8", "vit_base_patch8_224", 768, "timm ViT-B/8"),
    kaiko_spec(
        "kaiko_vitl14",
        "vit_large_patch14_reg4_224",
        1024,
        "timm ViT-L/14 reg4",
        timm_arch="vit_large_patch14_reg4_dinov2",
        checkpoint=with_pos_embed_grid(16),
    ),
)
