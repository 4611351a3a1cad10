"""Which patches and patch features a set of slide encoders needs, decided before any work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ConfigError
from .spec import SlideEncoderSpec

MAG_OPT_OUT = "--allow-mag-mismatch"


@dataclass(frozen=True)
class SlideEncoderPlan:
    encoders: tuple[SlideEncoderSpec, ...]
    patch_encoders: tuple[str, ...]  # the union of what they consume, sorted
    patch_size: int
    target_mag: int


def _shared_geometry(specs: Sequence[SlideEncoderSpec]) -> tuple[int, int] | None:
    """The one (patch px, magnification) every fixed-geometry encoder needs; refuses encoders that disagree."""
    fixed = [spec for spec in specs if spec.patch_size is not None]
    if not fixed:
        return None
    first = fixed[0]
    for other in fixed[1:]:
        if (other.patch_size, other.magnification) != (first.patch_size, first.magnification):
            raise ConfigError(
                f"slide encoders {first.name} ({first.geometry}) and {other.name} ({other.geometry}) need "
                "different patch geometries, so they cannot share one per-slide H5: run "
                f"`--slide-encoders {first.name} --patch-size {first.patch_size}` and "
                f"`--slide-encoders {other.name} --patch-size {other.patch_size}` separately, each with its own "
                "--output"
            )
    return first.patch_size, first.magnification or 0


def plan_slide_encoders(
    specs: Sequence[SlideEncoderSpec], patch_size: int, target_mag: int, allow_mag_mismatch: bool = False
) -> SlideEncoderPlan:
    if not specs:
        raise ConfigError("--slide-encoders: name at least one slide encoder")
    shared = _shared_geometry(specs)
    if shared is not None:
        wanted_size, wanted_mag = shared
        owners = ", ".join(spec.name for spec in specs if spec.patch_size is not None)
        if patch_size != wanted_size:
            raise ConfigError(
                f"--patch-size {patch_size} does not match {owners} ({wanted_size} px @ {wanted_mag}x): "
                f"use --patch-size {wanted_size}"
            )
        if wanted_mag and target_mag != wanted_mag and not allow_mag_mismatch:
            raise ConfigError(
                f"--target-mag {target_mag} does not match {owners} (trained at {wanted_mag}x): use --target-mag "
                f"{wanted_mag}, or pass {MAG_OPT_OUT} to embed patches taken at {target_mag}x anyway"
            )
    return SlideEncoderPlan(
        encoders=tuple(specs),
        patch_encoders=tuple(sorted({spec.patch_encoder for spec in specs})),
        patch_size=patch_size,
        target_mag=target_mag,
    )
