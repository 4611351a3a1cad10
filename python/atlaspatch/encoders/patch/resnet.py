"""ImageNet ResNet-50 truncated after ``layer3`` (TRIDENT's ``resnet50``): the classic CLAM baseline, 1024-d.

The architecture is the *full* timm ``resnet50`` (``fc`` included), so the official ``timm/resnet50.tv_in1k``
file loads with ``strict=True``; the head then keeps stem + ``layer1``–``layer3`` and average-pools the 1024
channels. That is what TRIDENT computes with ``features_only=True, out_indices=[3]`` + ``AdaptiveAvgPool2d(1)``.
(AtlasPatch's own ``resnet50`` is the 2048-d torchvision model; this project's contract names the truncated one.)
torch and timm are imported inside the factories only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...weights import WeightsSource
from .spec import PatchEncoderSpec, Preprocess

if TYPE_CHECKING:
    from torch import nn


def resnet50_full() -> nn.Module:
    """timm ``resnet50`` (torchvision layout, 1000-class ``fc``), random init; never downloads."""
    import timm

    return timm.create_model("resnet50", pretrained=False)


def truncated_after_layer3(trunk: nn.Module) -> nn.Module:
    """Stem + ``layer1``–``layer3`` + global average pool: (B, 3, H, W) → (B, 1024). ``layer4`` and ``fc`` go."""
    from torch import nn

    return nn.Sequential(
        trunk.conv1,
        trunk.bn1,
        trunk.act1,
        trunk.maxpool,
        trunk.layer1,
        trunk.layer2,
        trunk.layer3,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
    )


# Facts: TRIDENT ResNet50InferenceEncoder (timm resnet50.tv_in1k, out_indices [3], pool, Resize 224 → CenterCrop 224
# bilinear, ImageNet; recommended 256 px at 20x). timm's Hub repositories ship model.safetensors (and
# pytorch_model.bin); torchvision's weights are BSD-3-Clause and the repository is not gated.
SPECS: tuple[PatchEncoderSpec, ...] = (
    PatchEncoderSpec(
        name="resnet50",
        dim=1024,
        preprocess=Preprocess(224, resize=224),
        weights=WeightsSource("resnet50", "timm/resnet50.tv_in1k", "model.safetensors", licence="BSD-3-Clause"),
        architecture=resnet50_full,
        head=truncated_after_layer3,
        description="ImageNet ResNet-50 (torchvision weights) truncated after layer3, average-pooled",
        recommended=(256, 20),
        family="timm ResNet-50 trunc",
        channels_last=True,
    ),
)
