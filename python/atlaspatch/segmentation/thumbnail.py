"""The low-magnification overview that tissue segmentation works on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..devices import usable_cpus
from ..slides.reader import Slide

THUMBNAIL_MAGNIFICATION = 1.25
THUMBNAIL_MAX_SIDE = 1024
READ_TILE = 4096  # level pixels per read: bounds memory on single-level gigapixel slides
STRIP_MIN_ROWS = 1024  # below this a whole-level read is too short to gain from threads


@dataclass
class Thumbnail:
    image: np.ndarray  # RGB uint8 (h, w, 3)
    downsample: tuple[float, float]  # level-0 pixels per thumbnail pixel, (x, y)


def thumbnail_size(
    width: int, height: int, base_magnification: float | None, max_side: int = THUMBNAIL_MAX_SIDE
) -> tuple[int, int]:
    """Size at 1.25× (or any magnification when None), shrunk so that the longest side is at most max_side."""
    downsample = 1.0 if base_magnification is None else max(base_magnification / THUMBNAIL_MAGNIFICATION, 1.0)
    downsample = max(downsample, max(width, height) / max_side)
    return max(1, round(width / downsample)), max(1, round(height / downsample))


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    shrinking = size[0] <= pixels.shape[1] and size[1] <= pixels.shape[0]
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def read_thumbnail(slide: Slide) -> Thumbnail:
    """The segmentation input: 1.25×, longest side ≤ 1024 px."""
    width, height = slide.dimensions
    return read_downsampled(slide, thumbnail_size(width, height, slide.magnification))


def read_overview(slide: Slide, max_side: int = 1024) -> Thumbnail:
    """A picture of the whole slide for people: longest side max_side, whatever the magnification."""
    width, height = slide.dimensions
    return read_downsampled(slide, thumbnail_size(width, height, None, max_side))


def read_downsampled(slide: Slide, size: tuple[int, int]) -> Thumbnail:
    width, height = slide.dimensions
    out_w, out_h = size
    level = slide.best_level_for_downsample(width / out_w)
    level_w, level_h = slide.reader.level_dimensions[level]
    level_ds = slide.reader.level_downsamples[level]
    sx, sy = out_w / level_w, out_h / level_h
    if level_w <= READ_TILE and level_h <= READ_TILE:
        image = _resize(_read_whole_level(slide, level, level_w, level_h), (out_w, out_h))
    else:
        image = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for ty in range(0, level_h, READ_TILE):
            for tx in range(0, level_w, READ_TILE):
                tw, th = min(READ_TILE, level_w - tx), min(READ_TILE, level_h - ty)
                x0, x1 = round(tx * sx), round((tx + tw) * sx)
                y0, y1 = round(ty * sy), round((ty + th) * sy)
                if x1 <= x0 or y1 <= y0:
                    continue
                tile = slide.read_region((round(tx * level_ds), round(ty * level_ds)), level, (tw, th))
                image[y0:y1, x0:x1] = _resize(tile, (x1 - x0, y1 - y0))
    return Thumbnail(image=image, downsample=(width / out_w, height / out_h))


def _read_whole_level(slide: Slide, level: int, level_w: int, level_h: int) -> np.ndarray:
    """One level, read as horizontal strips on threads where the reader is thread-safe (OpenSlide decodes JPEG with
    the GIL released): the thumbnail read is most of otsu's time. The pixels are exactly a single read's.

    Only for integer downsamples: OpenSlide renders a region that starts between level pixels interpolated, so a
    strip must start at a level-0 row that is an exact multiple of the downsample."""
    level_ds = slide.reader.level_downsamples[level]
    exact = float(level_ds).is_integer()
    strips = min(usable_cpus(), 4) if exact and slide.reader.backend == "openslide" and level_h >= STRIP_MIN_ROWS else 1
    if strips < 2:
        return slide.read_region((0, 0), level, (level_w, level_h))
    level_ds = int(level_ds)
    bounds = [round(level_h * i / strips) for i in range(strips + 1)]
    pixels = np.empty((level_h, level_w, 3), dtype=np.uint8)

    def read_strip(i: int) -> None:
        y0, y1 = bounds[i], bounds[i + 1]
        pixels[y0:y1] = slide.read_region((0, y0 * level_ds), level, (level_w, y1 - y0))

    with ThreadPoolExecutor(strips, thread_name_prefix="atlaspatch-thumbnail") as pool:
        list(pool.map(read_strip, range(strips)))
    return pixels
