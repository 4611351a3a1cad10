"""AtlasPatch's fine-tuned SAM2.1 hiera-tiny tissue segmenter.

Inference follows AtlasPatch 1.1 (``services/segmentation.py``): the thumbnail is resized bilinearly to
1024×1024 (aspect not kept), prompted with the full-frame box, decoded with ``multimask_output=False``,
thresholded at logit 0 and resized back to the thumbnail with NEAREST. The model is built from the ``sam2``
package's own ``sam2.1_hiera_t.yaml`` without the "dynamic multimask via stability" post-processing that
``build_sam2`` adds by default (AtlasPatch instantiates the bare config, so its decoder runs without it), and the
checkpoint's ``["model"]`` state dict is loaded with strict=True.
It runs in float32 on every device, as AtlasPatch does: the mask is a threshold on logits, so reduced
precision could move the tissue boundary.

This is the only module of the segmentation package that imports torch and sam2; the registry imports it
lazily, so ``--segmenter otsu`` never pays for them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..devices import resolve_torch_device
from ..errors import WeightsError, one_line
from ..weights import resolve_weights, sha256_of
from .registry import SAM2_WEIGHTS
from .thumbnail import Thumbnail

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # packaged with sam2; the architecture AtlasPatch fine-tuned
INPUT_SIZE = 1024
MASK_THRESHOLD = 0.0

# Noise from the sam2 package that says nothing about our results: the optional CUDA extension (_C) is only used
# by hole/sprinkle post-processing, which is off here; torch.jit.script is deprecated in new torch.
_QUIET = (
    r".*cannot import name '_C'.*",
    r".*Skipping the post-processing step.*",
    r".*Flash Attention is disabled.*",
    r".*torch\.jit\.script.*deprecated.*",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def build_sam2_tiny() -> torch.nn.Module:
    """The SAM2.1 hiera-tiny architecture with random weights, on CPU, in eval mode."""
    with _quiet():
        from sam2.build_sam import build_sam2

        return build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu", mode="eval", apply_postprocessing=False)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: not a readable torch checkpoint ({one_line(exc)}); delete it and fetch it again"
        ) from None
    state = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: not an AtlasPatch SAM2 checkpoint (expected a dict with a 'model' state dict)")
    return state


def _describe_keys(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")
    return f"{len(keys)} {kind} key(s): {shown}"


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(_describe_keys("missing", missing))
    if unexpected:
        problems.append(_describe_keys("unexpected", unexpected))
    if problems:
        raise WeightsError(f"{path}: not a SAM2.1 hiera-tiny checkpoint ({'; '.join(problems)})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"{path}: not a SAM2.1 hiera-tiny checkpoint ({one_line(exc)})") from None


def _model_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (h, w, 3) → 1024×1024, bilinear, aspect not kept (PIL, as AtlasPatch does)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        image = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))
    return image if image.flags.writeable else image.copy()  # torch warns about read-only arrays


def _to_thumbnail_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape == shape:
        return binary
    resized = Image.fromarray(binary).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.uint8).copy()


class Sam2Segmenter:
    """Segmenter protocol over SAM2ImagePredictor; ``predict`` runs the given thumbnails as one batch."""

    name = "sam2"

    def __init__(self, model: torch.nn.Module, device: torch.device, weights_id: str) -> None:
        with _quiet():
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            self._predictor = SAM2ImagePredictor(model, mask_threshold=MASK_THRESHOLD)
        self.device = device
        self.weights_id = weights_id

    @classmethod
    def load(cls, device: str = "cpu", model_dir: Path | None = None) -> Sam2Segmenter:
        torch_device = torch.device(resolve_torch_device(device))  # CUDA missing: warns, uses cpu
        path = resolve_weights(SAM2_WEIGHTS, model_dir)
        weights_id = f"{SAM2_WEIGHTS.source_id} sha256:{sha256_of(path)}"
        model = build_sam2_tiny()
        _load_strict(model, _read_state_dict(path), path)
        model.to(torch_device).eval()
        return cls(model, torch_device, weights_id)

    def predict(self, thumbnails: list[Thumbnail], mpps: list[float]) -> list[np.ndarray]:
        """uint8 masks (1 = tissue), each the size of its thumbnail. ``mpps`` is unused: SAM2 is scale-free."""
        if len(thumbnails) != len(mpps):
            raise ValueError(f"{len(thumbnails)} thumbnails but {len(mpps)} mpp values")
        if not thumbnails:
            return []
        images = [_model_input(thumb.image) for thumb in thumbnails]
        box = np.array([0, 0, INPUT_SIZE, INPUT_SIZE], dtype=np.float32)
        with torch.inference_mode(), _quiet():
            if len(images) == 1:
                self._predictor.set_image(images[0])
                masks, _, _ = self._predictor.predict(box=box, multimask_output=False)
                decoded = [masks[0]]
            else:
                self._predictor.set_image_batch(images)
                batch, _, _ = self._predictor.predict_batch(
                    box_batch=[box] * len(images), multimask_output=False, normalize_coords=True
                )
                decoded = [masks[0] for masks in batch]
            self._predictor.reset_predictor()  # drop the image embeddings between batches
        return [
            _to_thumbnail_size(mask, thumb.image.shape[:2]) for mask, thumb in zip(decoded, thumbnails, strict=True)
        ]
