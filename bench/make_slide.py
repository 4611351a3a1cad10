#!/usr/bin/env python
"""Build a large JPEG-tiled pyramidal generic TIFF by mosaicking real tissue (CMU-1-Small-Region).

    python bench/make_slide.py bench/out/mosaic-32768-20x.tiff --size 32768 --mpp 0.5 --seed 0
    python bench/make_slide.py bench/out/mosaic-32768-40x.tiff --size 32768 --mpp 0.25 --seed 0
    python bench/make_slide.py bench/out/mosaic-32768-20x-sparse.tiff --size 32768 --mpp 0.5 --seed 1 --sparse

The canvas is a grid of cells, each a little larger than the (rescaled) CMU tissue image. About 60% of the cells
hold the whole tissue image, randomly rotated by a multiple of 90° and/or mirrored, at a random offset; some of
the other cells hold a small fragment cut around tissue (so small objects matter), the rest stay empty glass.
The source tissue is rescaled from its 0.499 µm/px to the requested mpp, so a 40× variant (--mpp 0.25) shows
the same physical tissue at twice the pixels.

Every level is rendered tile by tile straight from that layout (never from a full-size raster), so memory stays
at a few hundred MB whatever --size is. Each pyramid level is written as its own top-level tiled page (OpenSlide's
generic-tiff driver reads top-level tiled pages as levels; it does not read SubIFDs), with XResolution/YResolution
in pixels per centimetre (ResolutionUnit CENTIMETER), so OpenSlide reports openslide.mpp-x = --mpp.

Needs tifffile and imagecodecs (JPEG) in the environment, plus openslide-python to read the source.
The output is skipped (cached) if it exists already; pass --force to rebuild.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_SOURCE = Path("/work/shared/data/slides/CMU-1-Small-Region.svs")
SOURCE_MPP_FALLBACK = 0.499
TILE = 256
GLASS_SATURATION = 15  # HSV saturation below this counts as glass when estimating the background colour
TISSUE_SATURATION = 20
DENSE_FILL, DENSE_FRAGMENT = 0.6, 0.15  # defaults: ≈ 14 % of the slide is tissue
SPARSE_FILL, SPARSE_FRAGMENT = 0.1, 0.1  # --sparse: a few sections and fragments on mostly empty glass


@dataclass(frozen=True)
class Placement:
    orient: int  # 0..7: k = orient % 4 quarter turns, mirrored if orient >= 4
    crop: tuple[int, int, int, int]  # (x, y, w, h) in level-0 pixels of the oriented source
    dest: tuple[int, int]  # level-0 position of the crop's top-left on the canvas


def orient_image(image: np.ndarray, orient: int) -> np.ndarray:
    out = np.rot90(image, orient % 4)
    return out[:, ::-1] if orient >= 4 else out


def oriented_shape(shape: tuple[int, int], orient: int) -> tuple[int, int]:
    h, w = shape
    return (w, h) if orient % 2 else (h, w)


def read_source(path: Path) -> tuple[np.ndarray, float]:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        width, height = slide.level_dimensions[0]
        rgba = np.asarray(slide.read_region((0, 0), 0, (width, height)))
        mpp = float(slide.properties.get("openslide.mpp-x", SOURCE_MPP_FALLBACK))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb, mpp


def glass_colour(image: np.ndarray) -> tuple[int, int, int]:
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
    glass = image[saturation < GLASS_SATURATION]
    if not len(glass):
        return (243, 243, 243)
    return tuple(int(v) for v in np.median(glass, axis=0))  # type: ignore[return-value]


def plan_layout(
    size: int,
    source_hw: tuple[int, int],
    tissue_mask: np.ndarray,
    rng: np.random.Generator,
    fill: float,
    fragment: float,
) -> tuple[list[Placement], int]:
    """Placements on a grid of square cells; returns (placements, cell side)."""
    long_side = max(source_hw)
    cells = max(1, int(size // (long_side * 1.08)))
    cell = math.ceil(size / cells)
    placements: list[Placement] = []
    ys, xs = np.nonzero(tissue_mask)
    for cy in range(cells):
        for cx in range(cells):
            origin_x, origin_y = cx * cell, cy * cell
            room_w, room_h = min(cell, size - origin_x), min(cell, size - origin_y)
            orient = int(rng.integers(8))
            h, w = oriented_shape(source_hw, orient)
            roll = rng.random()
            if roll < fill and h <= room_h and w <= room_w:
                dx, dy = int(rng.integers(0, room_w - w + 1)), int(rng.integers(0, room_h - h + 1))
                placements.append(Placement(orient, (0, 0, w, h), (origin_x + dx, origin_y + dy)))
            elif roll < fill + fragment and len(xs):
                # a small fragment (¼–⅛ of the long side) centred on a random tissue pixel of the source
                side = int(long_side * rng.uniform(0.06, 0.14))
                i = int(rng.integers(len(xs)))
                sx, sy = int(xs[i]), int(ys[i])  # in the unoriented source
                # crop in the unoriented source, then map the box through the orientation
                x0 = int(np.clip(sx - side // 2, 0, source_hw[1] - side))
                y0 = int(np.clip(sy - side // 2, 0, source_hw[0] - side))
                box = _orient_box((x0, y0, side, side), source_hw, orient)
                dx = int(rng.integers(0, max(1, room_w - side)))
                dy = int(rng.integers(0, max(1, room_h - side)))
                placements.append(Placement(orient, box, (origin_x + dx, origin_y + dy)))
    return placements, cell


def _orient_box(box: tuple[int, int, int, int], source_hw: tuple[int, int], orient: int) -> tuple[int, int, int, int]:
    """Where an (x, y, w, h) box of the unoriented source lands in orient_image(source, orient)."""
    probe = np.zeros(source_hw, dtype=np.uint8)
    x, y, w, h = box
    probe[y : y + h, x : x + w] = 1
    oriented = orient_image(probe, orient)
    rows, cols = np.nonzero(oriented.any(axis=1))[0], np.nonzero(oriented.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


class LevelRenderer:
    """Renders 256 px tiles of one pyramid level from the layout."""

    def __init__(
        self,
        source: np.ndarray,
        placements: list[Placement],
        cell: int,
        size: int,
        downsample: int,
        glass: tuple[int, int, int],
    ) -> None:
        self.ds = downsample
        self.width = self.height = math.ceil(size / downsample)
        h, w = source.shape[:2]
        if downsample == 1:
            self.source = source
        else:
            self.source = cv2.resize(
                source, (max(1, round(w / downsample)), max(1, round(h / downsample))), interpolation=cv2.INTER_AREA
            )
        self.oriented = [orient_image(self.source, k) for k in range(8)]
        self.glass = np.array(glass, dtype=np.uint8)
        self.cell = cell
        self.by_cell: dict[tuple[int, int], list[Placement]] = {}
        for p in placements:
            # a placement may spill past its cell (fragments): index it under every cell it touches
            x, y = p.dest
            w0, h0 = p.crop[2], p.crop[3]
            for cy in range(y // cell, (y + h0 - 1) // cell + 1):
                for cx in range(x // cell, (x + w0 - 1) // cell + 1):
                    self.by_cell.setdefault((cx, cy), []).append(p)

    def _scaled(self, p: Placement) -> tuple[np.ndarray, int, int]:
        src = self.oriented[p.orient]
        x, y, w, h = p.crop
        ds = self.ds
        x0, y0 = round(x / ds), round(y / ds)
        x1, y1 = max(x0 + 1, round((x + w) / ds)), max(y0 + 1, round((y + h) / ds))
        return src[y0:y1, x0:x1], round(p.dest[0] / ds), round(p.dest[1] / ds)

    def tile(self, tx: int, ty: int) -> np.ndarray:
        out = np.empty((TILE, TILE, 3), dtype=np.uint8)
        out[:] = self.glass
        x0, y0 = tx * TILE, ty * TILE
        ds, cell = self.ds, self.cell
        seen: set[int] = set()
        for cy in range((y0 * ds) // cell, ((y0 + TILE) * ds - 1) // cell + 1):
            for cx in range((x0 * ds) // cell, ((x0 + TILE) * ds - 1) // cell + 1):
                for p in self.by_cell.get((cx, cy), ()):
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                    patch, px, py = self._scaled(p)
                    ph, pw = patch.shape[:2]
                    ix0, iy0 = max(px, x0), max(py, y0)
                    ix1, iy1 = min(px + pw, x0 + TILE), min(py + ph, y0 + TILE)
                    if ix1 > ix0 and iy1 > iy0:
                        out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = patch[iy0 - py : iy1 - py, ix0 - px : ix1 - px]
        return out

    def tiles(self):
        for ty in range(math.ceil(self.height / TILE)):
            for tx in range(math.ceil(self.width / TILE)):
                yield self.tile(tx, ty)


def build(
    out: Path,
    size: int,
    mpp: float,
    seed: int,
    downsamples: list[int],
    source_path: Path,
    quality: int,
    fill: float,
    fragment: float,
) -> dict:
    import tifffile

    started = time.perf_counter()
    source, source_mpp = read_source(source_path)
    scale = source_mpp / mpp
    if abs(scale - 1) > 0.02:
        h, w = source.shape[:2]
        source = cv2.resize(
            source,
            (round(w * scale), round(h * scale)),
            interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA,
        )
    glass = glass_colour(source)
    tissue = cv2.cvtColor(source, cv2.COLOR_RGB2HSV)[..., 1] > TISSUE_SATURATION
    rng = np.random.default_rng(seed)
    placements, cell = plan_layout(size, source.shape[:2], tissue, rng, fill, fragment)
    resolution = 10_000.0 / mpp  # pixels per centimetre
    tmp = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = []
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        for index, ds in enumerate(downsamples):
            renderer = LevelRenderer(source, placements, cell, size, ds, glass)
            if min(renderer.width, renderer.height) < 1:
                break
            writer.write(
                renderer.tiles(),
                shape=(renderer.height, renderer.width, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",  # tifffile stores JPEG as YCbCr 4:2:0, as scanners do
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(resolution / ds, resolution / ds),
                resolutionunit="CENTIMETER",
                subfiletype=0 if index == 0 else 1,  # 1 = reduced-resolution image
                description=f"atlaspatch bench mosaic of {source_path.name}; seed {seed}" if index == 0 else None,
                metadata=None,
                software="atlaspatch bench/make_slide.py",
                maxworkers=1,  # >1 makes tifffile queue raw tiles ahead (656 MB vs 209 MB at 32768²)
            )
            levels.append((renderer.width, renderer.height))
    tmp.replace(out)
    tissue_cells = sum(1 for p in placements if p.crop[2] == oriented_shape(source.shape[:2], p.orient)[1])
    return {
        "path": str(out),
        "size": size,
        "mpp": mpp,
        "seed": seed,
        "fill": fill,
        "fragment": fragment,
        "downsamples": downsamples[: len(levels)],
        "levels": levels,
        "cell": cell,
        "whole_tissue_placements": tissue_cells,
        "fragments": len(placements) - tissue_cells,
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


def verify(path: Path) -> dict:
    """Open with OpenSlide the way AtlasPatch and LazySlide do, and report what it sees."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        props = slide.properties
        info = {
            "vendor": props.get("openslide.vendor"),
            "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": [round(d, 4) for d in slide.level_downsamples],
            "mpp_x": props.get("openslide.mpp-x"),
            "mpp_y": props.get("openslide.mpp-y"),
        }
        # decode a tile at every level (catches an unreadable JPEG encoding early)
        for level, (w, h) in enumerate(slide.level_dimensions):
            ds = slide.level_downsamples[level]
            slide.read_region((int(w // 2 * ds), int(h // 2 * ds)), level, (64, 64))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32768, help="width = height of level 0 in pixels")
    parser.add_argument("--mpp", type=float, default=0.5, help="µm per pixel (0.5 = 20×, 0.25 = 40×)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--downsamples", default="1,4,16,64", help="comma-separated level downsamples")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    parser.add_argument(
        "--fill", type=float, default=None, help="fraction of cells holding the whole tissue image (default 0.6)"
    )
    parser.add_argument(
        "--fragment", type=float, default=None, help="fraction of cells holding a small fragment (default 0.15)"
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help=f"sparse tissue: --fill {SPARSE_FILL} --fragment {SPARSE_FRAGMENT} unless given (≈ 2–3 %% tissue)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT exists")
    args = parser.parse_args(argv)
    default_fill, default_fragment = (SPARSE_FILL, SPARSE_FRAGMENT) if args.sparse else (DENSE_FILL, DENSE_FRAGMENT)
    args.fill = default_fill if args.fill is None else args.fill
    args.fragment = default_fragment if args.fragment is None else args.fragment
    downsamples = [int(v) for v in args.downsamples.split(",")]
    if downsamples[0] != 1 or sorted(downsamples) != downsamples:
        parser.error("--downsamples must start at 1 and increase")
    if args.out.exists() and not args.force:
        print(json.dumps({"path": str(args.out), "cached": True, **verify(args.out)}))
        return 0
    info = build(
        args.out, args.size, args.mpp, args.seed, downsamples, args.source, args.quality, args.fill, args.fragment
    )
    print(json.dumps({**info, "cached": False, **verify(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
