"""PRISM (Paige): a Perceiver over a slide's Virchow (v1) features, run from its official repo code."""

from __future__ import annotations

from collections.abc import Mapping
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
    name="prism",
    repo_id="paige-ai/Prism",
    filename="model.safetensors",
    gated=True,
    licence="CC-BY-NC-ND-4.0",
    snapshot=True,
)

DROPPED_SUBMODULES = ("text_decoder",)  # BioGPT-large (~1.5B parameters): only needed for text


def encode_prism(model: nn.Module, inputs: SlideInputs, device: str) -> torch.Tensor:
    """``slide_representations(tile_embeddings [1,N,2560] f32, tile_mask=None)['image_embedding']``; no coords."""
    from .remote import batch_of

    output = model.slide_representations(batch_of(inputs.features, np.float32, device), tile_mask=None)
    if not isinstance(output, Mapping) or "image_embedding" not in output:
        raise WeightsError("prism: slide_representations returned no 'image_embedding'")
    return output["image_embedding"]


def build(spec: SlideEncoderSpec, weights: Path | None, device: str) -> SlideModel:
    """The official PRISM code and weights without the text decoder (never allocated, its weights never read)."""
    from .remote import RemoteSlideModel, load_remote_model

    if weights is None or spec.weights is None:
        raise WeightsError(f"{spec.name}: no weights file was resolved")
    model = load_remote_model(
        spec.weights, weights, drop=DROPPED_SUBMODULES, config_overrides={"tie_word_embeddings": False}
    )
    return RemoteSlideModel(model, device, encode_prism)


SPEC = SlideEncoderSpec(
    name="prism",
    dim=1280,
    patch_encoder="virchow_v1",
    patch_size=224,
    magnification=20,
    weights=WEIGHTS,
    build=build,
    inputs="features",
    description="PRISM slide encoder (Paige) on Virchow features (vision part; the text decoder is not loaded)",
)
