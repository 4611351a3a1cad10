"""A random-init MOOZY checkpoint in the `moozy` package's own stage-2 file format (what HF ``moozy.pt`` is).

The model is built by the package's own constructors, the way its stage-2 training builds it: the slide encoder
from ``SlideEncoderConfig()`` (variant ``base_half_depth``: 6 layers, d 768, 12 heads, FF 3072, 4 registers) on
384-d Lunit features through ``load_teacher_slide_encoder``, and the case transformer from ``build_supervised_model``
with ``Stage2TrainConfig``'s defaults (variant ``base_quarter_depth``: 3 layers, 12 heads, FF 3072, LayerScale,
no registers), no task heads. It is written by the package's ``save_supervised_checkpoint``, the function that
writes ``moozy_best.pt`` / ``moozy_final.pt``, so ``load_stage2_inference_model`` reads it as it reads the official
file. 42.83M slide-encoder + 21.27M case-transformer parameters (a 256 MB file); with the 21.7M Lunit ViT-S/8 that
is the 85.8M the MOOZY card gives, and 42.8M is its stage-1 slide encoder, which pins these two variants down.

One change from the package's init: the case transformer's LayerScale gammas start at 1e-5, which would make the
case embedding nearly independent of the slide; they are drawn in [0.5, 1.5) instead (trained values are O(0.1-1)),
so that the embedding depends on the features the way a trained model's does. Never a model: only a file of the
real architecture and format for exercising the loading and encoding paths offline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

FEAT_DIM = 384  # lunit_vit_small_patch8_dino
SLIDE_ENCODER_VARIANT = "base_half_depth"


def _stage2_case_defaults() -> dict[str, Any]:
    """The ``case_transformer_*`` defaults of the package's stage-2 training config."""
    from moozy.config.stage2 import Stage2TrainConfig

    fields = dataclasses.fields(Stage2TrainConfig)
    return {f.name: f.default for f in fields if f.name.startswith("case_transformer_")}


def build_random_moozy(seed: int = 0) -> Any:
    """The stage-2 MOOZY model (slide encoder + case transformer), random weights drawn from ``seed``."""
    import torch
    from moozy.config.model import SlideEncoderConfig
    from moozy.models.factory import build_supervised_model, load_teacher_slide_encoder
    from moozy.models.layers import LayerScale

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        slide_encoder, _ = load_teacher_slide_encoder(
            SlideEncoderConfig(variant=SLIDE_ENCODER_VARIANT), teacher_checkpoint="", feat_dim=FEAT_DIM
        )
        model = build_supervised_model(
            slide_encoder, task_info={"tasks": []}, survival_bin_edges={}, **_stage2_case_defaults()
        )
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.case_transformer.modules():
                if isinstance(module, LayerScale):
                    module.gamma.copy_(0.5 + torch.rand(module.gamma.shape, generator=generator))
    return model.eval()


def write_moozy_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random-init MOOZY ``moozy.pt`` at ``path`` (parents created); the same seed gives the same tensors."""
    from moozy.training.callbacks.checkpoint import save_supervised_checkpoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_supervised_checkpoint(build_random_moozy(seed), str(path))
    return path
