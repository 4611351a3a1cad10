"""Build a registered slide encoder with its official weights on a device; check what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import WeightsError
from ...weights import resolve_weights
from .spec import SlideEncoderSpec, SlideInputs, SlideModel


@dataclass
class LoadedSlideEncoder:
    spec: SlideEncoderSpec
    model: SlideModel
    device: str
    weights_source: str  # "<repo>/<file>", or "none"
    weights_sha256: str  # "" when the model has no weights

    @property
    def precision(self) -> str:
        return self.model.precision

    def encode(self, inputs: SlideInputs) -> np.ndarray:
        """The slide's (dim,) float32 embedding; anything else from the model is a one-line error."""
        output = np.asarray(self.model.encode(inputs))
        if output.ndim == 2 and output.shape[0] == 1:
            output = output[0]
        if output.shape != (self.spec.dim,):
            raise WeightsError(
                f"{self.spec.name} returned shape {tuple(output.shape)}, its registry entry says ({self.spec.dim},)"
            )
        output = output.astype(np.float32)
        if not np.isfinite(output).all():
            raise WeightsError(f"{self.spec.name} returned non-finite values for {inputs.h5_path.name}")
        return output


def require_slide_weights(spec: SlideEncoderSpec, model_dir: Path | None) -> Path | None:
    """The weights file, found or fetched now: a one-line WeightsError before any work if it cannot be had."""
    return resolve_weights(spec.weights, model_dir) if spec.weights is not None else None


def load_slide_encoder(
    spec: SlideEncoderSpec, device: str = "cpu", model_dir: Path | None = None
) -> LoadedSlideEncoder:
    path = require_slide_weights(spec, model_dir)
    if path is None:
        return LoadedSlideEncoder(spec, spec.build(spec, None, "cpu"), "cpu", "none", "")
    from ...devices import resolve_torch_device
    from ..patch.loading import weights_fingerprint

    device = resolve_torch_device(device, "--device")
    model = spec.build(spec, path, device)
    return LoadedSlideEncoder(spec, model, device, spec.weights.source_id, weights_fingerprint(path))
