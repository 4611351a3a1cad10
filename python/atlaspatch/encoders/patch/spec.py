"""What a patch encoder is, as one row of the registry table.

A spec separates three things so the official checkpoints load unchanged:

- ``architecture()`` builds the module the official weights file loads into with ``strict=True`` (random init,
  never downloads anything);
- ``checkpoint`` reads that file (safetensors / ``.bin`` / ``.pth``) into the state dict ``architecture()``
  expects — unwrapping a top-level key or renaming keys where the upstream format is not timm's;
- ``head`` turns the loaded module into the embedding function ``(B, 3, H, W) -> (B, dim)`` (CLS token,
  CLS ⊕ mean of patch tokens, a truncated trunk + pooling, …).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...weights import WeightsSource

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """Patch pixels → model input: resize (shorter side, or both sides when ``square``), centre crop, normalise.

    This is torchvision's ``Resize → CenterCrop → ToTensor → Normalize`` as the model cards give it.
    """

    input_size: int  # side of the square the model sees
    resize: int | None = None  # resize target before the crop; None: straight to input_size
    square: bool = False  # resize both sides to `resize` (Resize((s, s))) instead of the shorter side
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def describe(self) -> str:
        steps = []
        if self.resize is not None:
            steps.append(f"resize {self.resize}{'x' + str(self.resize) if self.square else ''} {self.interpolation}")
            if self.resize != self.input_size or not self.square:
                steps.append(f"crop {self.input_size}")
        else:
            steps.append(f"resize {self.input_size}x{self.input_size} {self.interpolation}")
        return ", ".join(steps)


def _identity_head(module: nn.Module) -> nn.Module:
    return module


@dataclass(frozen=True)
class PatchEncoderSpec:
    name: str  # as AtlasPatch names it; also features/<name> in the H5 and the model-dir subfolder
    dim: int
    preprocess: Preprocess
    weights: WeightsSource | None
    architecture: Callable[[], nn.Module]
    checkpoint: Callable[[Path], dict[str, torch.Tensor]] = field(default=lambda path: read_state_dict(path))
    head: Callable[[nn.Module], nn.Module] = _identity_head
    description: str = ""
    recommended: tuple[int, int] | None = None  # (patch px, magnification) the authors extract at
    family: str = ""  # e.g. "timm ViT-L/16", for `atlaspatch models`
    # convolutional trunk: BatchNorms folded into the convolutions, run in channels-last memory (faster oneDNN/cuDNN)
    channels_last: bool = False

    @property
    def kind(self) -> str:
        return "patch encoder"


def read_state_dict(path: Path, unwrap: tuple[str, ...] = ()) -> dict[str, Any]:
    """Tensors of a checkpoint file in any of the formats model repositories ship.

    ``unwrap`` names top-level keys to descend into when present (e.g. ``("model",)``, ``("state_dict",)``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, Any] = load_file(str(path), device="cpu")
    else:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in unwrap:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Keys without a common prefix (``module.``, ``backbone.``); keys lacking it are kept as they are."""
    return {key[len(prefix) :] if key.startswith(prefix) else key: value for key, value in state.items()}
