"""Segmenters by name. Each turns thumbnails into binary tissue masks of the same size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..weights import WeightsSource
from .thumbnail import Thumbnail

SAM2_WEIGHTS = WeightsSource(
    name="sam2",
    repo_id="AtlasAnalyticsLab/AtlasPatch",
    filename="model.pth",
    gated=False,
    licence="CC-BY-NC-SA-4.0",
)


class Segmenter(Protocol):
    name: str
    weights_id: str  # provenance of the weights ("none" for classical methods)

    def predict(self, thumbnails: list[Thumbnail], mpps: list[float]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class SegmenterSpec:
    name: str
    description: str
    weights: WeightsSource | None
    build: Callable[[str, Path | None], Segmenter]  # (device, model_dir) -> segmenter


def _build_otsu(device: str, model_dir: Path | None) -> Segmenter:
    from .otsu import OtsuSegmenter

    return OtsuSegmenter()


def _build_sam2(device: str, model_dir: Path | None) -> Segmenter:
    from .sam2 import Sam2Segmenter  # imports torch: only when asked for

    return Sam2Segmenter.load(device=device, model_dir=model_dir)


SEGMENTERS: dict[str, SegmenterSpec] = {
    spec.name: spec
    for spec in (
        SegmenterSpec(
            "sam2",
            "AtlasPatch's fine-tuned SAM2.1 hiera-tiny (weights: AtlasAnalyticsLab/AtlasPatch)",
            SAM2_WEIGHTS,
            _build_sam2,
        ),
        SegmenterSpec("otsu", "saturation + Otsu threshold with morphology (no weights)", None, _build_otsu),
    )
}


def build_segmenter(name: str, device: str = "cpu", model_dir: Path | None = None) -> Segmenter:
    try:
        spec = SEGMENTERS[name]
    except KeyError:
        raise ConfigError(f"unknown segmenter {name!r}; choose one of: {', '.join(SEGMENTERS)}") from None
    return spec.build(device, model_dir)
