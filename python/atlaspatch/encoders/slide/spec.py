"""What a slide encoder is: one registry row, the inputs it gets, and the loaded model's interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ...weights import WeightsSource


@dataclass(frozen=True)
class SlideInputs:
    """Everything a slide encoder may consume, read from one finished per-slide H5."""

    h5_path: Path  # the H5 the features were read from (MOOZY's package reads it itself)
    features: np.ndarray  # float32 (N, D) features/<patch_encoder>, row-aligned with coords
    coords: np.ndarray  # int64 (N, 2) level-0 top-left x, y
    patch_size: int  # at the target magnification
    patch_size_level0: int  # the same patch, in level-0 pixels
    target_magnification: int

    @property
    def num_patches(self) -> int:
        return int(self.features.shape[0])


class SlideModel(Protocol):
    """A slide encoder ready to run: one slide in, one (dim,) float32 vector out."""

    precision: str  # what the model really runs in on its device

    def encode(self, inputs: SlideInputs) -> np.ndarray: ...


# build(spec, weights path or None, torch device) -> the model, weights loaded, on the device
SlideModelBuilder = Callable[["SlideEncoderSpec", "Path | None", str], SlideModel]


@dataclass(frozen=True)
class SlideEncoderSpec:
    name: str
    dim: int
    patch_encoder: str  # the features/<name> it consumes
    patch_size: int | None  # px at the target magnification it was trained on; None: any geometry
    magnification: int | None  # the target magnification it was trained at; None: any
    weights: WeightsSource | None
    build: SlideModelBuilder
    inputs: str = "features"  # what it reads besides nothing else, for `atlaspatch models`
    description: str = ""
    kind: str = "slide encoder"

    @property
    def geometry(self) -> str:
        if self.patch_size is None:
            return "any"
        return f"{self.patch_size} px @ {self.magnification}x"
