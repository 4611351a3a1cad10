"""``mean-<patch_encoder>``: the mean of a slide's patch features, for any registered patch encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .spec import SlideEncoderSpec, SlideInputs

PREFIX = "mean-"


class MeanPooling:
    precision = "float64"  # accumulated in float64, stored as float32

    def encode(self, inputs: SlideInputs) -> np.ndarray:
        return inputs.features.astype(np.float64).mean(axis=0).astype(np.float32)


def _build(spec: SlideEncoderSpec, weights: Path | None, device: str) -> MeanPooling:
    return MeanPooling()


def mean_spec(patch_encoder: str, dim: int) -> SlideEncoderSpec:
    return SlideEncoderSpec(
        name=PREFIX + patch_encoder,
        dim=dim,
        patch_encoder=patch_encoder,
        patch_size=None,
        magnification=None,
        weights=None,
        build=_build,
        inputs="features",
        description=f"mean of the {patch_encoder} patch features (no weights)",
    )
