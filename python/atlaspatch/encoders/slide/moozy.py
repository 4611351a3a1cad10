"""MOOZY (AtlasAnalyticsLab): the `moozy` package's case encoder, run on the per-slide H5 we write.

``moozy.encoding.run_encoding([h5], out)`` (what AtlasPatch calls) fetches its checkpoint from the hub itself, picks
CUDA whenever it is visible and reloads the model on every call. This adapter runs the same public building blocks
in the same order — ``load_stage2_inference_model``, ``load_stage2_slide_sample`` (the package's own H5 reader and
feature grid, with the same VRAM token cap on CUDA), ``run_case_encoding(..., mixed_precision=False)`` and its
``cls`` output — so it computes what ``run_encoding([h5], out, mixed_precision=False)`` computes, with two
differences only: the checkpoint is the one our resolver found (model dir, HF cache, hub) and the device is ours.
The model is loaded once and serves every slide; each slide is one case of one slide.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import H5Error, WeightsError, one_line
from ...weights import WeightsSource
from .spec import SlideEncoderSpec, SlideInputs

log = logging.getLogger("atlaspatch")

WEIGHTS = WeightsSource(
    name="moozy",
    repo_id="AtlasAnalyticsLab/MOOZY",
    filename="moozy.pt",
    gated=False,
    licence="CC-BY-NC-SA-4.0",
)

FEATURE_KEY = "lunit_vit_small_patch8_dino"  # what run_encoding reads: features/<this> of an AtlasPatch H5
_ERROR_LIMIT = 300


def _short(error: BaseException, path: Path | None = None) -> str:
    """One line, at most _ERROR_LIMIT characters; ``path`` shortened to its name (the message already names it)."""
    text = one_line(error)
    if path is not None:
        text = text.replace(str(path), path.name)
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 3] + "..."


def _weights_problem(error: BaseException) -> str:
    """How a checkpoint failed: the file itself, or its contents against the MOOZY architecture."""
    misfit = isinstance(error, (KeyError, ValueError, TypeError)) or "state_dict" in str(error)
    return "do not fit the MOOZY stage-2 architecture" if misfit else "are unreadable"


def _load_model(weights: Path, device: str) -> Any:
    """The stage-2 MOOZY model (slide encoder + case transformer) from our checkpoint, on our device, in eval."""
    import torch
    from moozy.models.factory import load_stage2_inference_model

    try:
        return load_stage2_inference_model(str(weights), torch.device(device))
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise WeightsError(f"moozy weights at {weights} {_weights_problem(exc)} ({_short(exc)})") from None


def _token_cap(device: str) -> int:
    """run_encoding's cap on valid tokens per slide: from the GPU's memory on CUDA, none (0) elsewhere."""
    import torch
    from moozy.data.features import INFERENCE_TOKEN_PRESETS, resolve_vram_token_cap

    cap = int(resolve_vram_token_cap(presets=INFERENCE_TOKEN_PRESETS, device=torch.device(device)))
    if cap:
        log.info("moozy on %s: at most %d patches per slide (the package's VRAM preset)", device, cap)
    return cap


class MoozyModel:
    """MOOZY loaded once; ``encode`` turns one per-slide H5 into its (768,) float32 case embedding."""

    precision = "float32"  # run_encoding(..., mixed_precision=False): no autocast, fp32 weights

    def __init__(self, model: Any, device: str, max_tokens: int) -> None:
        self.model = model
        self.device = device
        self.max_tokens = max_tokens

    def _read_sample(self, h5_path: Path) -> Any:
        """The package's own reader and grid builder, with run_encoding's arguments."""
        from moozy.data.stage2 import load_stage2_slide_sample

        try:
            return load_stage2_slide_sample(
                h5_path.name,
                str(h5_path),
                include_geometry_meta=True,
                max_valid_tokens_per_slide=self.max_tokens,
                feature_h5_format="auto",
                feature_h5_key=FEATURE_KEY,
            )
        except MemoryError:
            raise
        except Exception as exc:
            raise H5Error(f"moozy cannot read {h5_path.name}: {_short(exc, h5_path)}") from None

    def encode(self, inputs: SlideInputs) -> np.ndarray:
        import torch
        from moozy.encoding import run_case_encoding

        sample = self._read_sample(Path(inputs.h5_path))
        outputs = run_case_encoding(self.model, [sample], torch.device(self.device), mixed_precision=False)
        case = outputs.get("cls")
        if case is None:
            raise WeightsError("moozy returned no 'cls' embedding")
        return case.detach().float().cpu().numpy().squeeze(0).astype(np.float32)


def build(spec: SlideEncoderSpec, weights: Path | None, device: str) -> MoozyModel:
    if weights is None:
        raise WeightsError(f"{spec.name} needs its weights file ({WEIGHTS.repo_id}/{WEIGHTS.filename})")
    model = _load_model(Path(weights), device)
    return MoozyModel(model, device, _token_cap(device))


SPEC = SlideEncoderSpec(
    name="moozy",
    dim=768,
    patch_encoder=FEATURE_KEY,
    patch_size=224,
    magnification=20,
    weights=WEIGHTS,
    build=build,
    inputs="the H5 (features, coords, patch_size_level0, patch_size)",
    description="MOOZY slide/case encoder (AtlasAnalyticsLab) on Lunit DINO ViT-S/8 features",
)
