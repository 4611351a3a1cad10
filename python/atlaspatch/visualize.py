"""Overlays for people: tissue mask, tissue contours, and the patch grid, drawn on a slide overview."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from .h5 import schema
from .segmentation.contours import rasterize
from .segmentation.thumbnail import read_overview
from .slides.reader import Slide
from .stages.segment import TissueSegmentation

OVERVIEW_MAX_SIDE = 1536
MASK_COLOUR = (40, 170, 60)  # RGB
TISSUE_EDGE = (220, 30, 30)
HOLE_EDGE = (30, 60, 220)


@dataclass(frozen=True)
class VisualizeOptions:
    grids: bool = False
    mask: bool = False
    contours: bool = False

    @property
    def any(self) -> bool:
        return self.grids or self.mask or self.contours


def _save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp.png")
    cv2.imwrite(str(temp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    os.replace(temp, path)


def mask_overlay(overview: np.ndarray, tissue_mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    tinted = overview.astype(np.float32)
    colour = np.array(MASK_COLOUR, dtype=np.float32)
    on = tissue_mask.astype(bool)
    tinted[on] = (1 - alpha) * tinted[on] + alpha * colour
    return tinted.astype(np.uint8)


def contour_overlay(overview: np.ndarray, tissue: TissueSegmentation, scale: float) -> np.ndarray:
    picture = overview.copy()
    for k, polygon in enumerate(tissue.contours.polygons):
        points = np.round(polygon * scale).astype(np.int32).reshape(-1, 1, 2)
        is_hole = tissue.contours.parents[k] >= 0
        cv2.polylines(
            picture, [points], True, HOLE_EDGE if is_hole else TISSUE_EDGE, 1 if is_hole else 2, lineType=cv2.LINE_AA
        )
    return picture


def _info_box(picture: np.ndarray, lines: list[str]) -> None:
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    height = 18 * len(lines) + 8
    width = max(cv2.getTextSize(line, font, size, thick)[0][0] for line in lines) + 12
    cv2.rectangle(picture, (4, 4), (4 + width, 4 + height), (255, 255, 255), -1)
    cv2.rectangle(picture, (4, 4), (4 + width, 4 + height), (0, 0, 0), 1)
    for i, line in enumerate(lines):
        cv2.putText(picture, line, (10, 20 + 18 * i), font, size, (0, 0, 0), thick, cv2.LINE_AA)


def grid_overlay(overview: np.ndarray, h5_path: Path, scale: float, slide: Slide) -> np.ndarray:
    picture = overview.copy()
    with h5py.File(h5_path, "r") as handle:
        attrs = handle.attrs
        patch_level0 = int(attrs["patch_size_level0"])
        count = int(attrs.get(schema.NUM_PATCHES, 0))
        side = max(1, round(patch_level0 * scale))
        for start in range(0, count, 65_536):
            for x, y in handle[schema.COORDS][start : start + 65_536, :2]:
                x0, y0 = round(x * scale), round(y * scale)
                cv2.rectangle(picture, (x0, y0), (x0 + side, y0 + side), (0, 0, 0), 1)
        width, height = slide.dimensions
        _info_box(
            picture,
            [
                f"{slide.stem}",
                f"patches: {count}",
                f"slide: {width} x {height} px @ {slide.magnification}x, {slide.mpp:g} um/px",
                f"patch {int(attrs['patch_size'])} px, step {int(attrs['step_size'])} px @ "
                f"{int(attrs['target_magnification'])}x",
                f"tissue thresh {float(attrs['tissue_thresh']):g}, segmenter {attrs['segmenter']}",
            ],
        )
    return picture


def write_visualizations(
    out_dir: Path, slide: Slide, tissue: TissueSegmentation, h5_path: Path, options: VisualizeOptions
) -> list[Path]:
    if not options.any:
        return []
    overview = read_overview(slide, OVERVIEW_MAX_SIDE)
    scale = overview.image.shape[1] / slide.dimensions[0]
    written: list[Path] = []
    if options.mask:
        tissue_mask = rasterize(tissue.contours, overview.image.shape[:2], scale)
        written.append(out_dir / f"{slide.stem}_mask.png")
        _save_png(written[-1], mask_overlay(overview.image, tissue_mask))
    if options.contours:
        written.append(out_dir / f"{slide.stem}_contours.png")
        _save_png(written[-1], contour_overlay(overview.image, tissue, scale))
    if options.grids:
        written.append(out_dir / f"{slide.stem}.png")
        _save_png(written[-1], grid_overlay(overview.image, h5_path, scale, slide))
    return written
