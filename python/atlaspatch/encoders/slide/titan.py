"""TITAN (MahmoodLab): a ViT over the 2-D grid of a slide's CONCH v1.5 features, run from its official repo code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import WeightsError
from ...weights import WeightsSource
from .spec import SlideEncoderSpec, SlideInputs, SlideModel

if TYPE_CHECKING:  # torch is imported when the model is built, not with the registry
    import torch
    from torch import nn

WEIGHTS = WeightsSource(
    name="titan",
    repo_id="MahmoodLab/TITAN",
    filename="model.safetensors",
    gated=True,
    licence="CC-BY-NC-ND-4.0",
    snapshot=True,
)


def encode_titan(model: nn.Module, inputs: SlideInputs, device: str) -> torch.Tensor:
    """``encode_slide_from_patch_features(features [1,N,768] f32, coords [1,N,2] int64, patch_size_lv0: int)``."""
    from .remote import batch_of

    features = batch_of(inputs.features, np.float32, device)
    coords = batch_of(inputs.coords[:, :2], np.int64, device)  # level-0 top-left x, y
    return model.encode_slide_from_patch_features(features, coords, int(inputs.patch_size_level0))


def build(spec: SlideEncoderSpec, weights: Path | None, device: str) -> SlideModel:
    """The official TITAN code and weights (loaded strictly), fp16 autocast on CUDA, fp32 on CPU."""
    from .remote import RemoteSlideModel, load_remote_model

    if weights is None or spec.weights is None:
        raise WeightsError(f"{spec.name}: no weights file was resolved")
    return RemoteSlideModel(load_remote_model(spec.weights, weights), device, encode_titan)


SPEC = SlideEncoderSpec(
    name="titan",
    dim=768,
    patch_encoder="conch_v15",
    patch_size=512,
    magnification=20,
    weights=WEIGHTS,
    build=build,
    inputs="features, level-0 coords, patch_size_level0",
    description="TITAN slide encoder (MahmoodLab) on CONCH v1.5 features",
)
