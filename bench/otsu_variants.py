#!/usr/bin/env python
"""Which step of the otsu segmenter loses tissue patches, and what would keep them (diagnostic, ~10 s).

    .venv/bin/python bench/otsu_variants.py [SLIDE]        # default bench/out/mosaic-32768-mpp0.5.tiff

Reads AtlasPatch's own thumbnail of the slide, builds tissue masks step by step (and a few alternatives),
tiles each through AtlasPatch's lattice (mask_to_contours → TissueLattice, tissue_thresh 0) and scores the kept
patches against the same reference as bench_segment_tile.py's coverage: level at downsample 16, HSV saturation > 20,
a patch has tissue if ≥ 5 % of its pixels are. The mask steps are re-implemented here (with otsu.py's constants),
so the table stays meaningful while the package's segmenter changes; the first row is the package's own mask.
Also writes bench/out/missed-patches.png: level-0 pixels of a sample of the tissue patches the package misses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment_tile import DEFAULT_SLIDE, OUT, Reference, coverage, slide_info


def ellipse(n: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (n, n))


def remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels]


def fill_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    _count, labels, stats, _ = cv2.connectedComponentsWithStats((1 - mask).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, i] for i in range(5))
    fill = ~((x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)) & (area < max_px)
    fill[0] = False
    return np.where(fill[labels], 1, mask).astype(np.uint8)


def hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """weak ∪ strong components that touch strong."""
    count, labels = cv2.connectedComponents((weak | strong).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[np.unique(labels[strong > 0])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    from atlaspatch.segmentation import otsu
    from atlaspatch.segmentation.contours import mask_to_contours
    from atlaspatch.segmentation.thumbnail import read_thumbnail
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.tiling.geometry import plan_geometry
    from atlaspatch.tiling.lattice import TissueLattice

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", nargs="?", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--target-mag", type=int, default=20)
    args = parser.parse_args(argv)

    info = slide_info(args.slide, args.patch_size, args.target_mag)
    lattice = info["lattice"]
    ref = Reference(args.slide)
    slide = open_slide(args.slide)
    geometry = plan_geometry(slide, args.patch_size, None, args.target_mag)
    size0 = geometry.patch_size_level0
    thumb = read_thumbnail(slide)
    thumb_mpp = slide.mpp * float(np.mean(thumb.downsample))
    min_obj = getattr(otsu, "MIN_OBJECT_UM2", 10_000.0) / thumb_mpp**2
    max_hole = getattr(otsu, "MAX_FILLED_HOLE_UM2", 20_000.0) / thumb_mpp**2
    floor = getattr(otsu, "MIN_SATURATION", 20)

    raw = cv2.cvtColor(thumb.image, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(raw, 3)
    threshold, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)

    def clean(mask: np.ndarray, do_open: bool = True) -> np.ndarray:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, ellipse(5))
        if do_open:
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, ellipse(3))
        return fill_holes(remove_small(mask, min_obj), max_hole)

    package = otsu.OtsuSegmenter().predict([thumb], [slide.mpp])[0].astype(np.uint8)
    step0 = (sat > max(threshold, floor)).astype(np.uint8)
    step1 = cv2.morphologyEx(step0, cv2.MORPH_CLOSE, ellipse(5))
    step2 = cv2.morphologyEx(step1, cv2.MORPH_OPEN, ellipse(3))
    step3 = remove_small(step2, min_obj)
    weak_raw = (raw > floor).astype(np.uint8)
    variants = {
        "package OtsuSegmenter (as shipped)": package,
        f"step: median3 sat > max(otsu={threshold:.0f}, {floor})": step0,
        "step: + close 5×5": step1,
        "step: + open 3×3": step2,
        f"step: + drop objects < {getattr(otsu, 'MIN_OBJECT_UM2', 1e4):g} µm²": step3,
        "step: + fill small holes (= otsu.py pipeline)": fill_holes(step3, max_hole),
        "alt: package mask dilated 3×3": cv2.dilate(package, ellipse(3)),
        f"alt: fixed threshold {floor} instead of Otsu": clean((sat > floor).astype(np.uint8)),
        f"alt: fixed threshold {floor}, no opening": clean((sat > floor).astype(np.uint8), do_open=False),
        f"alt: hysteresis (package ∪ raw sat > {floor} connected to it)": hysteresis(package, weak_raw),
        f"alt: raw sat > {floor}, no cleanup at all": weak_raw,
    }
    print(
        f"{args.slide.name}: thumbnail {thumb.image.shape[1]}×{thumb.image.shape[0]} (ds "
        f"{thumb.downsample[0]:.0f}, {thumb_mpp:.1f} µm/px); Otsu threshold {threshold:.0f}; reference: level "
        f"{ref.level} (ds {ref.downsample:g}), {int((ref.fractions(lattice, size0) >= 0.05).sum())} tissue patches"
    )
    print()
    print(
        "| mask | kept | kept with tissue | kept without (no tissue px) | missed tissue patches | tissue outside kept |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, mask in variants.items():
        contours = mask_to_contours(mask, thumb.downsample)
        lat = TissueLattice(contours, slide.dimensions, geometry)
        blocks = list(lat.iter_kept(0.0))
        kept = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int64)
        c = coverage(ref, lattice, size0, name, kept, slide.mpp)
        print(
            f"| {name} | {c['kept']} | {c['kept_with_tissue']} | {c['kept_without_tissue']} "
            f"({c['kept_without_any_tissue_px']}) | {c['missed_tissue_patches']} | "
            f"{c['uncovered_tissue_fraction']:.2%} |"
        )

    # a picture of what the package misses (level-0 pixels, with the reference tissue fraction)
    package_kept = np.concatenate(
        list(TissueLattice(mask_to_contours(package, thumb.downsample), slide.dimensions, geometry).iter_kept(0.0))
        or [np.zeros((0, 2), np.int64)]
    )
    kept_set = set(map(tuple, package_kept.tolist()))
    fractions = ref.fractions(lattice, size0)
    missed = [i for i, xy in enumerate(lattice.tolist()) if fractions[i] >= 0.05 and tuple(xy) not in kept_set]
    if missed:
        pick = np.random.default_rng(0).choice(missed, min(24, len(missed)), replace=False)
        tiles = []
        for i in pick:
            x, y = (int(v) for v in lattice[i])
            pixels = cv2.resize(slide.read_region((x, y), 0, (size0, size0)), (224, 224), interpolation=cv2.INTER_AREA)
            cv2.putText(pixels, f"{fractions[i]:.2f}", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 2)
            tiles.append(pixels)
        while len(tiles) % 6:
            tiles.append(np.full_like(tiles[0], 255))
        grid = np.concatenate([np.concatenate(tiles[r : r + 6], axis=1) for r in range(0, len(tiles), 6)], axis=0)
        path = OUT / "missed-patches.png"
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        print(f"\n{len(missed)} tissue patches missed by the package; a sample: {path}")
    slide.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
