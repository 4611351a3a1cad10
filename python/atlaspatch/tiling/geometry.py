"""Patch geometry at a target magnification, expressed in level-0 pixels and in the level we read from."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, SlideError
from ..slides.reader import Slide


@dataclass(frozen=True)
class TileGeometry:
    patch_size: int  # pixels at the target magnification
    step_size: int
    target_magnification: int
    base_magnification: int
    patch_size_level0: int
    step_size_level0: int
    level: int  # pyramid level the pixels are read from
    level_downsample: float
    read_size: int  # pixels read at `level`, resized to patch_size

    @property
    def overlap(self) -> int:
        return max(0, self.patch_size - self.step_size)


def validate_request(patch_size: int, step_size: int | None, target_mag: int) -> int:
    if patch_size < 1:
        raise ConfigError(f"--patch-size must be a positive number of pixels, got {patch_size}")
    step = patch_size if step_size is None else step_size
    if step < 1:
        raise ConfigError(f"--step-size must be a positive number of pixels, got {step}")
    if not 1 <= target_mag <= 120:
        raise ConfigError(f"--target-mag must be between 1 and 120, got {target_mag}")
    return step


def plan_geometry(slide: Slide, patch_size: int, step_size: int | None, target_mag: int) -> TileGeometry:
    step = validate_request(patch_size, step_size, target_mag)
    base = slide.magnification
    if target_mag > base:
        raise SlideError(
            f"{slide.path.name}: target magnification {target_mag}x is above the slide's base {base}x "
            f"(mpp {slide.mpp:g}); choose --target-mag {base} or lower"
        )
    # AtlasPatch/TRIDENT define patch_size_level0 with floor division; we read exactly that many pixels,
    # so the stored geometry and the pixels agree.
    patch_level0 = patch_size * base // target_mag
    step_level0 = max(1, step * base // target_mag)
    level = slide.best_level_for_downsample(base / target_mag)
    level_downsample = slide.reader.level_downsamples[level]
    read_size = max(1, round(patch_level0 / level_downsample))
    return TileGeometry(
        patch_size=patch_size,
        step_size=step,
        target_magnification=target_mag,
        base_magnification=base,
        patch_size_level0=patch_level0,
        step_size_level0=step_level0,
        level=level,
        level_downsample=level_downsample,
        read_size=read_size,
    )
