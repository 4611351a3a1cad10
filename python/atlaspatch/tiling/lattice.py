"""Which lattice positions hold enough tissue.

Patches sit on one slide-global lattice (multiples of the level-0 step from the origin), so overlapping
regions never produce duplicates and the same slide always yields the same grid. The tissue fraction of
every lattice patch comes from an integral image of the tissue polygons rasterised at a few pixels per step,
one band of lattice rows at a time, so memory does not grow with the slide or the patch count.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from ..segmentation.contours import TissueContours, tissue_coverage
from .geometry import TileGeometry

CELLS_PER_STEP = 8  # mask pixels per lattice step: fractions resolved to ~1/64 of a patch
MAX_MASK_SIDE = 16_384
SUPERSAMPLE = 4
ROWS_PER_BAND = 64  # lattice rows evaluated at once


def _mask_scale(width: int, height: int, step_level0: int) -> float:
    scale = CELLS_PER_STEP / step_level0
    return min(scale, MAX_MASK_SIDE / max(width, height))


def lattice_positions(length: int, step: int) -> np.ndarray:
    """Level-0 starts of every patch whose top-left lies on the slide."""
    return np.arange(0, length, step, dtype=np.int64)


class TissueLattice:
    def __init__(self, contours: TissueContours, dimensions: tuple[int, int], geometry: TileGeometry) -> None:
        width, height = dimensions
        self.contours = contours
        self.geometry = geometry
        self.scale = _mask_scale(width, height, geometry.step_size_level0)
        self.mask_shape = (max(1, round(height * self.scale)), max(1, round(width * self.scale)))
        self.xs = lattice_positions(width, geometry.step_size_level0)
        self.ys = lattice_positions(height, geometry.step_size_level0)

    @property
    def candidate_count(self) -> int:
        return len(self.xs) * len(self.ys)

    def _span(self, starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = np.round(starts * self.scale).astype(np.int64)
        hi = np.round((starts + self.geometry.patch_size_level0) * self.scale).astype(np.int64)
        hi = np.maximum(hi, lo + 1)
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit), hi - lo

    def tissue_fractions(self, ys: np.ndarray) -> np.ndarray:
        """(len(ys), len(xs)) fraction of each patch's area that is tissue."""
        mask_h, mask_w = self.mask_shape
        x0, x1, width = self._span(self.xs, mask_w)
        y0, y1, height = self._span(ys, mask_h)
        top, bottom = int(y0.min()), int(y1.max())
        if bottom <= top or not self.contours.regions:
            return np.zeros((len(ys), len(self.xs)))
        coverage = tissue_coverage(self.contours, (bottom - top, mask_w), self.scale, SUPERSAMPLE, first_row=top)
        table = cv2.integral(coverage, sdepth=cv2.CV_32S)
        y0, y1 = y0 - top, y1 - top
        inside = table[y1][:, x1].astype(np.int64) - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
        return inside / (SUPERSAMPLE * SUPERSAMPLE * height[:, None] * width[None, :])

    def iter_kept(self, tissue_thresh: float) -> Iterator[np.ndarray]:
        """Level-0 (x, y) int64 arrays, row-major, of patches with tissue ≥ tissue_thresh (and > 0)."""
        for start in range(0, len(self.ys), ROWS_PER_BAND):
            ys = self.ys[start : start + ROWS_PER_BAND]
            fractions = self.tissue_fractions(ys)
            keep = (fractions > 0) & (fractions >= tissue_thresh)
            rows, cols = np.nonzero(keep)
            if rows.size:
                yield np.stack([self.xs[cols], ys[rows]], axis=1)
