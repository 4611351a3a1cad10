"""Classical tissue detection: saturation, Otsu's threshold grown by hysteresis, closing, small-object and
hole cleanup."""

from __future__ import annotations

import cv2
import numpy as np

from .thumbnail import Thumbnail

MIN_SATURATION = 20  # glass and dust stay below this; tissue above it counts when connected to clear tissue
MIN_OBJECT_UM2 = 2_500.0  # 50 × 50 µm: smaller specks are dust or debris
MAX_FILLED_HOLE_UM2 = 20_000.0  # smaller gaps inside tissue are tears/noise, larger ones real lumens


def _area_px(area_um2: float, thumbnail_mpp: float) -> float:
    return area_um2 / (thumbnail_mpp * thumbnail_mpp)


def _remove_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    background = (1 - mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    h, w = mask.shape
    fill = np.zeros(count, dtype=bool)
    for label in range(1, count):
        x, y, bw, bh, area = stats[label]
        touches_border = x == 0 or y == 0 or x + bw == w or y + bh == h
        fill[label] = not touches_border and area < max_px
    return np.where(fill[labels], 1, mask).astype(np.uint8)


def _grow_into_weak(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Hysteresis: faint tissue (pale stroma, thin strands, frayed borders) counts when it touches clear tissue."""
    count, labels = cv2.connectedComponents((weak | strong).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[np.unique(labels[strong > 0])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def otsu_tissue_mask(thumbnail: Thumbnail, mpp: float) -> np.ndarray:
    thumbnail_mpp = mpp * float(np.mean(thumbnail.downsample))
    hsv = cv2.cvtColor(thumbnail.image, cv2.COLOR_RGB2HSV)
    saturation = cv2.medianBlur(hsv[..., 1], 3)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    strong = (saturation > max(otsu, MIN_SATURATION)).astype(np.uint8)
    weak = (saturation > MIN_SATURATION).astype(np.uint8)
    mask = _grow_into_weak(strong, weak)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    mask = _remove_small_objects(mask, _area_px(MIN_OBJECT_UM2, thumbnail_mpp))
    return _fill_small_holes(mask, _area_px(MAX_FILLED_HOLE_UM2, thumbnail_mpp))


class OtsuSegmenter:
    name = "otsu"
    weights_id = "none"

    def predict(self, thumbnails: list[Thumbnail], mpps: list[float]) -> list[np.ndarray]:
        return [otsu_tissue_mask(thumb, mpp) for thumb, mpp in zip(thumbnails, mpps, strict=True)]
