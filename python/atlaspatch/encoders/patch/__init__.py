"""Patch encoders: a registry of exact architectures whose official checkpoints load with strict=True."""

from .registry import PatchEncoderRegistry, parse_names, patch_encoder_registry
from .spec import PatchEncoderSpec, Preprocess

__all__ = ["PatchEncoderRegistry", "PatchEncoderSpec", "Preprocess", "parse_names", "patch_encoder_registry"]
