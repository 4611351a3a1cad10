"""Tile stage: tissue regions → patch coordinates at the target magnification, streamed into the H5."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from ..h5 import schema
from ..h5.atomic import atomic_h5
from ..h5.attrs import write_attrs
from ..h5.provenance import slide_attrs
from ..slides.reader import Slide
from ..tiling.filters import passes_pixel_filters
from ..tiling.geometry import TileGeometry, plan_geometry
from ..tiling.lattice import TissueLattice
from .segment import TissueSegmentation, write_tissue

PIXEL_CHUNK = 256  # patches read per round trip to the worker threads


@dataclass(frozen=True)
class TileOptions:
    patch_size: int
    target_mag: int
    step_size: int | None = None
    tissue_thresh: float = 0.0
    fast_mode: bool = True
    white_thresh: int = 15
    black_thresh: int = 50
    write_batch: int = 8192
    patch_workers: int | None = None
    save_images: bool = False

    @property
    def workers(self) -> int:
        return self.patch_workers or os.cpu_count() or 1


@dataclass
class TileResult:
    num_patches: int
    candidates: int
    geometry: TileGeometry


def geometry_attrs(geometry: TileGeometry, options: TileOptions, segmenter: str) -> dict[str, Any]:
    """The fields that decide whether an existing H5 can serve a request (see h5.schema.GEOMETRY_FIELDS)."""
    return {
        "patch_size": geometry.patch_size,
        "step_size": geometry.step_size,
        "target_magnification": geometry.target_magnification,
        "patch_size_level0": geometry.patch_size_level0,
        "segmenter": segmenter,
        "tissue_thresh": float(options.tissue_thresh),
        "fast_mode": bool(options.fast_mode),
        "white_thresh": int(options.white_thresh),
        "black_thresh": int(options.black_thresh),
    }


def _coords_rows(xy: np.ndarray, geometry: TileGeometry) -> np.ndarray:
    rows = np.empty((len(xy), 5), dtype=np.int32)
    rows[:, :2] = xy
    rows[:, 2:4] = geometry.read_size
    rows[:, 4] = geometry.level
    return rows


def read_patch(slide: Slide, row: np.ndarray | tuple[int, ...], patch_size: int) -> np.ndarray:
    """RGB pixels of the patch a coords row (x, y, read_w, read_h, level) describes, at patch_size × patch_size."""
    x, y, read_w, read_h, level = (int(v) for v in row[:5])
    pixels = slide.read_region((x, y), level, (read_w, read_h))
    if (read_w, read_h) != (patch_size, patch_size):
        shrinking = read_w > patch_size
        pixels = cv2.resize(
            pixels, (patch_size, patch_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
        )
    return pixels


def patch_image_path(images_dir: Path, stem: str, x: int, y: int) -> Path:
    return images_dir / stem / f"{stem}_x{int(x)}_y{int(y)}.png"


def clear_patch_images(images_dir: Path, stem: str) -> None:
    """Re-tiling makes a slide's patch PNGs stale; they are removed, whether or not this run saves new ones: a later
    --save-images on the new H5 would otherwise take a PNG named after a coordinate both lattices share for the new
    patch."""
    shutil.rmtree(images_dir / stem, ignore_errors=True)


def save_patch_png(path: Path, rgb: np.ndarray) -> None:
    temp = path.with_name(f".{path.name}.tmp.png")
    if not cv2.imwrite(str(temp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    os.replace(temp, path)


class _PixelPass:
    """Reads each candidate's pixels on worker threads: pixel filters and/or PNG export."""

    def __init__(self, slide: Slide, patch_size: int, filters: TileOptions | None, images_dir: Path | None) -> None:
        self.slide, self.patch_size, self.filters, self.images_dir = slide, patch_size, filters, images_dir
        if images_dir is not None:
            (images_dir / slide.stem).mkdir(parents=True, exist_ok=True)

    def _visit(self, row: np.ndarray) -> bool:
        if self.images_dir is not None and self.filters is None:
            target = patch_image_path(self.images_dir, self.slide.stem, row[0], row[1])
            if target.exists():
                return True
        pixels = read_patch(self.slide, row, self.patch_size)
        if self.filters is not None and not passes_pixel_filters(
            pixels, self.filters.white_thresh, self.filters.black_thresh
        ):
            return False
        if self.images_dir is not None:
            save_patch_png(patch_image_path(self.images_dir, self.slide.stem, row[0], row[1]), pixels)
        return True

    def filter(self, pool: ThreadPoolExecutor, rows: np.ndarray) -> np.ndarray:
        keep = list(pool.map(self._visit, rows))
        return rows[np.asarray(keep, dtype=bool)]


def iter_patch_coords(
    slide: Slide,
    tissue: TissueSegmentation,
    geometry: TileGeometry,
    options: TileOptions,
    images_dir: Path | None = None,
) -> Iterator[np.ndarray]:
    """Yield (k, 5) int32 coords blocks in row-major lattice order, never holding the whole list."""
    lattice = TissueLattice(tissue.contours, slide.dimensions, geometry)
    needs_pixels = not options.fast_mode or images_dir is not None
    if not needs_pixels:
        for xy in lattice.iter_kept(options.tissue_thresh):
            yield _coords_rows(xy, geometry)
        return
    pixel_pass = _PixelPass(slide, geometry.patch_size, None if options.fast_mode else options, images_dir)
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        for xy in lattice.iter_kept(options.tissue_thresh):
            rows = _coords_rows(xy, geometry)
            for start in range(0, len(rows), PIXEL_CHUNK):
                kept = pixel_pass.filter(pool, rows[start : start + PIXEL_CHUNK])
                if len(kept):
                    yield kept


def export_patch_images(slide: Slide, h5_path: Path, images_dir: Path, workers: int) -> int:
    """PNGs for the patches of an existing H5 (those not exported yet): --save-images on a reused H5."""
    with h5py.File(h5_path, "r") as handle:
        patch_size = int(handle.attrs["patch_size"])
        total = int(handle.attrs.get(schema.NUM_PATCHES, handle[schema.COORDS].shape[0]))
        pixel_pass = _PixelPass(slide, patch_size, None, images_dir)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, total, PIXEL_CHUNK):
                pixel_pass.filter(pool, handle[schema.COORDS][start : start + PIXEL_CHUNK])
    return total


class _CoordsWriter:
    def __init__(self, handle: h5py.File, write_batch: int) -> None:
        self.write_batch = max(1, write_batch)
        self.dataset = handle.create_dataset(
            schema.COORDS, shape=(0, 5), maxshape=(None, 5), dtype=np.int32, chunks=(self.write_batch, 5)
        )
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.pending_rows += len(rows)
        if self.pending_rows >= self.write_batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending_rows:
            return
        block = np.concatenate(self.pending)
        start = self.dataset.shape[0]
        self.dataset.resize(start + len(block), axis=0)
        self.dataset[start:] = block
        self.pending, self.pending_rows = [], 0

    @property
    def rows(self) -> int:
        return self.dataset.shape[0] + self.pending_rows


def _write_passports(handle: h5py.File, stem: str, geometry: TileGeometry, total: int, write_batch: int) -> None:
    coords = handle[schema.COORDS]
    passports = handle.create_dataset(
        schema.PASSPORTS,
        shape=(total,),
        dtype=schema.PASSPORT_DTYPE,
        chunks=(max(1, min(write_batch, total)),) if total else None,
    )
    for start in range(0, total, write_batch):
        block = coords[start : start + write_batch]
        passports[start : start + len(block)] = [
            schema.PASSPORT_FORMAT.format(
                stem=stem,
                x=x,
                y=y,
                rw=rw,
                rh=rh,
                lv=lv,
                mag=geometry.base_magnification or "na",
                tmag=geometry.target_magnification or "na",
                total=total,
            ).encode()
            for x, y, rw, rh, lv in block.tolist()
        ]


def _drop_patch_data(handle: h5py.File) -> None:
    for name in (schema.COORDS, schema.PASSPORTS, schema.FEATURES, schema.SLIDE_FEATURES):
        if name in handle:
            del handle[name]


def write_tiled_h5(
    out_path: Path,
    slide: Slide,
    tissue: TissueSegmentation,
    options: TileOptions,
    start_from: Path | None = None,
    images_dir: Path | None = None,
) -> TileResult:
    """Write `out_path` (atomically): slide attrs, tissue, coords, passports and geometry attrs.

    With `start_from` the new file starts as a copy of that H5 (which is never modified); any coords and
    everything derived from them are replaced.
    """
    geometry = plan_geometry(slide, options.patch_size, options.step_size, options.target_mag)
    with atomic_h5(out_path, start_from=start_from) as handle:
        _drop_patch_data(handle)
        if schema.NUM_PATCHES in handle.attrs:
            del handle.attrs[schema.NUM_PATCHES]
        write_attrs(handle, slide_attrs(slide))
        if start_from is None or schema.TISSUE not in handle:
            write_tissue(handle, tissue)
        writer = _CoordsWriter(handle, options.write_batch)
        for rows in iter_patch_coords(slide, tissue, geometry, options, images_dir):
            writer.add(rows)
        writer.flush()
        total = writer.rows
        _write_passports(handle, slide.stem, geometry, total, options.write_batch)
        write_attrs(handle, geometry_attrs(geometry, options, tissue.segmenter))
        write_attrs(
            handle,
            {
                "overlap": geometry.overlap,
                "step_size_level0": geometry.step_size_level0,
                "read_level": geometry.level,
                "read_size": geometry.read_size,
                "passport_format": schema.PASSPORT_FORMAT,
                "passport_version": schema.PASSPORT_VERSION,
            },
        )
        handle.attrs[schema.NUM_PATCHES] = total  # last: marks the file finished
    lattice_candidates = len(range(0, slide.dimensions[0], geometry.step_size_level0)) * len(
        range(0, slide.dimensions[1], geometry.step_size_level0)
    )
    return TileResult(num_patches=total, candidates=lattice_candidates, geometry=geometry)
