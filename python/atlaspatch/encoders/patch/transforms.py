"""Patch pixels (uint8 RGB) → normalised model input, the way torchvision's Resize/CenterCrop/Normalize do it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .spec import Preprocess

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _resized(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    target = preprocess.resize if preprocess.resize is not None else preprocess.input_size
    height, width = pixels.shape[:2]
    if preprocess.square or height == width:
        size = (target, target)
    elif width < height:
        size = (target, int(target * height / width))
    else:
        size = (int(target * width / height), target)
    if size == (width, height):
        return pixels
    # PIL resizes with antialiasing, like torchvision's Resize on PIL images (what the model cards use)
    return np.asarray(Image.fromarray(pixels).resize(size, _FILTERS[preprocess.interpolation]))


def _center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if (height, width) == (side, side):
        return pixels
    top = round((height - side) / 2.0)
    left = round((width - side) / 2.0)
    return pixels[top : top + side, left : left + side]


def to_uint8_batch(patches: Sequence[np.ndarray], preprocess: Preprocess) -> torch.Tensor:
    """(B, S, S, 3) uint8: each H×W×3 uint8 RGB patch resized and centre-cropped, not yet normalised.

    This is what DataLoader workers hand over: a quarter of the bytes of the float32 input, through shared memory
    and on to the GPU.
    """
    side = preprocess.input_size
    batch = np.empty((len(patches), side, side, 3), dtype=np.uint8)
    for index, pixels in enumerate(patches):
        batch[index] = _center_crop(_resized(pixels, preprocess), side)
    return torch.from_numpy(batch)


def normalize_batch(
    batch: torch.Tensor, preprocess: Preprocess, memory_format: torch.memory_format = torch.channels_last
) -> torch.Tensor:
    """(B, S, S, 3) uint8 on any device → (B, 3, S, S) float32 normalised, on that device, in `memory_format`:
    one float tensor allocated, converted into and normalised in place."""
    images = torch.empty(
        (batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=torch.float32, device=batch.device,
        memory_format=memory_format,
    )  # fmt: skip
    images.copy_(batch.permute(0, 3, 1, 2))
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return images.div_(255.0).sub_(mean).div_(std)


def to_model_input(patches: Sequence[np.ndarray], preprocess: Preprocess) -> torch.Tensor:
    """(B, 3, S, S) float32, normalised, contiguous. ``patches`` are H×W×3 uint8 RGB arrays."""
    return normalize_batch(to_uint8_batch(patches, preprocess), preprocess, torch.contiguous_format)
