"""Mask → tissue regions with holes, in level-0 pixels; and back to a raster at any scale."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_HOLE_PX = 16  # thumbnail pixels; smaller holes are noise and are filled


@dataclass
class TissueContours:
    """Polygons in level-0 pixel coordinates. parents[k] == -1: tissue region; otherwise the region it holes."""

    polygons: list[np.ndarray]
    parents: np.ndarray

    @property
    def regions(self) -> list[int]:
        return [k for k, parent in enumerate(self.parents) if parent < 0]

    def holes_of(self, region: int) -> list[int]:
        return [k for k, parent in enumerate(self.parents) if parent == region]

    @property
    def is_empty(self) -> bool:
        return not self.regions

    def pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points float32 (P,2), offsets int64 (K+1,), parents int32 (K,)) for storage."""
        offsets = np.zeros(len(self.polygons) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in self.polygons])
        points = np.concatenate(self.polygons).astype(np.float32) if self.polygons else np.zeros((0, 2), np.float32)
        return points, offsets, self.parents.astype(np.int32)

    @classmethod
    def unpack(cls, points: np.ndarray, offsets: np.ndarray, parents: np.ndarray) -> TissueContours:
        polygons = [np.asarray(points[offsets[k] : offsets[k + 1]], dtype=np.float32) for k in range(len(parents))]
        return cls(polygons=polygons, parents=np.asarray(parents, dtype=np.int32))


def mask_to_contours(
    mask: np.ndarray, downsample: tuple[float, float], min_hole_px: int = MIN_HOLE_PX
) -> TissueContours:
    """Outer boundaries and holes (two-level hierarchy) of a binary mask, scaled to level 0.

    Thumbnail pixel (i, j) covers level-0 [i·ds, (i+1)·ds); its centre is (i + 0.5)·ds, which is where the
    traced boundary vertex belongs.
    """
    binary = (mask > 0).astype(np.uint8)
    found, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return TissueContours(polygons=[], parents=np.zeros(0, np.int32))
    hierarchy = hierarchy[0]
    scale = np.array(downsample, dtype=np.float64)
    polygons: list[np.ndarray] = []
    parents: list[int] = []
    new_index: dict[int, int] = {}
    for k, contour in enumerate(found):
        if hierarchy[k][3] < 0:
            new_index[k] = len(polygons)
            polygons.append(((contour[:, 0, :] + 0.5) * scale).astype(np.float32))
            parents.append(-1)
    for k, contour in enumerate(found):
        parent = hierarchy[k][3]
        if parent >= 0 and parent in new_index and cv2.contourArea(contour) >= min_hole_px:
            polygons.append(((contour[:, 0, :] + 0.5) * scale).astype(np.float32))
            parents.append(new_index[parent])
    return TissueContours(polygons=polygons, parents=np.asarray(parents, dtype=np.int32))


def tissue_coverage(
    contours: TissueContours,
    shape: tuple[int, int],
    scale: float,
    supersample: int = 4,
    first_row: int = 0,
    band_rows: int = 512,
) -> np.ndarray:
    """uint8 (h, w): how many of each pixel's supersample² sub-pixels are tissue (0..supersample²).

    Covers mask rows first_row .. first_row + h. cv2.fillPoly rounds vertices and fills inclusively, which
    biases a plain raster by up to a pixel on the right and bottom edges; sub-pixel sampling shrinks that bias
    to 1/supersample of a pixel. Rendered in bands of band_rows rows to bound memory.
    """
    height, width = shape
    coverage = np.zeros(shape, dtype=np.uint8)
    fine_scale = scale * supersample
    for top in range(0, height, band_rows):
        rows = min(band_rows, height - top)
        band = _rasterize_window(
            contours, (rows * supersample, width * supersample), fine_scale, offset_y=(first_row + top) * supersample
        )
        # the area mean of supersample² values of 0 or supersample² is exactly the tissue sub-pixel count
        weight = supersample * supersample
        coverage[top : top + rows] = cv2.resize(band * weight, (width, rows), interpolation=cv2.INTER_AREA)
    return coverage


def _rasterize_window(contours: TissueContours, shape: tuple[int, int], scale: float, offset_y: int = 0) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4  # sub-pixel precision of cv2.fillPoly

    def fixed(polygon: np.ndarray) -> np.ndarray:
        pixels = polygon.astype(np.float64) * scale - 0.5
        pixels[:, 1] -= offset_y
        return np.round(pixels * (1 << shift)).astype(np.int32)

    regions = [fixed(contours.polygons[k]) for k in contours.regions]
    holes = [fixed(contours.polygons[k]) for k, parent in enumerate(contours.parents) if parent >= 0]
    if regions:
        cv2.fillPoly(mask, regions, 1, lineType=cv2.LINE_8, shift=shift)
    if holes:
        cv2.fillPoly(mask, holes, 0, lineType=cv2.LINE_8, shift=shift)
    return mask


def rasterize(contours: TissueContours, shape: tuple[int, int], scale: float) -> np.ndarray:
    """uint8 mask (1 = tissue) of `shape` (h, w), where one mask pixel is 1/scale level-0 pixels.

    Uses the pixel-centre convention: level-0 point p lands at p·scale − 0.5.
    """
    return _rasterize_window(contours, shape, scale)
