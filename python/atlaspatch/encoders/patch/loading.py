"""Build a registered patch encoder with its official weights, on a device, in a precision."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...devices import resolve_torch_device
from ...errors import ConfigError, WeightsError, one_line
from ...weights import resolve_weights, sha256_of
from .spec import PatchEncoderSpec
from .transforms import normalize_batch

log = logging.getLogger("atlaspatch")

PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_precision(precision: str, device: str, option: str = "--feature-precision") -> str:
    """The precision the model really runs in: float16 on CPU falls back to float32, with a warning."""
    precision = precision.strip().lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"{option} {precision!r}: choose float32, float16 or bfloat16")
    if precision == "float16" and not device.startswith("cuda"):
        log.warning("%s float16 is not supported on %s; using float32", option, device)
        return "float32"
    return precision


def weights_fingerprint(path: Path) -> str:
    """SHA-256 of a weights file. A file in the Hugging Face cache is a blob already named by its SHA-256."""
    blob = Path(path).resolve()
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return blob.name
    return sha256_of(blob)


def _short(error: BaseException, limit: int = 300) -> str:
    text = one_line(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_weights_into(spec: PatchEncoderSpec, module: nn.Module, path: Path) -> None:
    """Strict load of the official file; a file that does not fit the architecture is a one-line WeightsError."""
    try:
        state = spec.checkpoint(path)
    except Exception as exc:
        raise WeightsError(f"{spec.name} weights at {path} are unreadable ({_short(exc)})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{spec.name} weights at {path} do not fit the {spec.name} architecture ({_short(exc)})"
        ) from None


@dataclass
class LoadedPatchEncoder:
    spec: PatchEncoderSpec
    model: nn.Module  # (B, 3, S, S) -> (B, dim)
    device: str
    precision: str
    weights_source: str  # "<repo>/<file>", or "none"
    weights_sha256: str  # hex digest of the weights file ("" when the model has none)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.spec.channels_last else torch.contiguous_format

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 (B, dim) features on the CPU. ``images``: (B, S, S, 3) uint8 (normalised here, on the device)
        or (B, 3, S, S) already normalised."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize_batch(images, self.spec.preprocess, self.memory_format)
        images = images.to(dtype=self.dtype, memory_format=self.memory_format)
        features = self.model(images)
        if features.ndim > 2:
            features = features.flatten(1)
        if features.shape[-1] != self.spec.dim:
            raise WeightsError(
                f"{self.spec.name} produced {features.shape[-1]}-d features, its registry entry says {self.spec.dim}"
            )
        return features.float().cpu()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """The eval-mode model with each BatchNorm that follows a convolution folded into its weights and bias.

    Same features to float32 rounding, one kernel fewer per convolution: +17 % patches/s for ResNet-50 on a CPU
    (bench/bench_embed_patches.py). A model torch.fx cannot trace is returned as it is.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model, inplace=True)
    except Exception as exc:  # any tracing failure only means no folding
        log.debug("BatchNorm folding skipped for %s: %s", type(model).__name__, one_line(exc))
        return model


def require_weights(spec: PatchEncoderSpec, model_dir: Path | None) -> Path | None:
    """The weights file, found or fetched now: a one-line WeightsError before any work if it cannot be had."""
    return resolve_weights(spec.weights, model_dir) if spec.weights is not None else None


def load_patch_encoder(
    spec: PatchEncoderSpec, device: str = "cpu", precision: str = "float32", model_dir: Path | None = None
) -> LoadedPatchEncoder:
    device = resolve_torch_device(device, "--feature-device")
    precision = resolve_precision(precision, device)
    path = require_weights(spec, model_dir)
    source = spec.weights.source_id if spec.weights is not None else "none"
    digest = weights_fingerprint(path) if path is not None else ""
    module = spec.architecture()
    if path is not None:
        load_weights_into(spec, module, path)
    model = spec.head(module).eval()
    if spec.channels_last:
        model = fold_batch_norms(model)
    model = model.to(device=device, dtype=PRECISIONS[precision])
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedPatchEncoder(spec, model, device, precision, weights_source=source, weights_sha256=digest)
