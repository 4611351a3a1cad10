"""Per-patch pixel filters of --no-fast-mode: mostly-white (glass) and mostly-black patches are dropped."""

from __future__ import annotations

import cv2
import numpy as np

DROP_FRACTION = 0.7
WHITE_MIN_VALUE = 200


def white_fraction(rgb: np.ndarray, white_thresh: int) -> float:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    white = (hsv[..., 1] < white_thresh) & (hsv[..., 2] >= WHITE_MIN_VALUE)
    return float(white.mean())


def black_fraction(rgb: np.ndarray, black_thresh: int) -> float:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float((gray < black_thresh).mean())


def passes_pixel_filters(rgb: np.ndarray, white_thresh: int, black_thresh: int) -> bool:
    return white_fraction(rgb, white_thresh) < DROP_FRACTION and black_fraction(rgb, black_thresh) < DROP_FRACTION
