#!/usr/bin/env python
"""Time LazySlide's tissue detection + tiling on one slide. Runs inside the LazySlide venv, never the project's.

    bench/out/venv-lazyslide/bin/python bench/lazyslide_runner.py SLIDE --reps 5 --tile-px 224 --mpp 0.5 \
        --config default --out-prefix bench/out/lazyslide-default

Per repetition (timed from open_wsi to tiles in memory, like AtlasPatch's open → H5 written):

    wsi = open_wsi(SLIDE)
    zs.pp.find_tissues(wsi)                       # --config default (level="auto")
    zs.pp.find_tissues(wsi, level=L)              # --config level=L
    zs.pp.tile_tissues(wsi, TILE_PX, mpp=MPP)     # background_filter=True, background_fraction=0.3 (defaults)

After the timed repetitions, the last repetition's tiles are saved as (n, 2) int64 level-0 top-left corners
(PREFIX.tiles.npy), and — untimed — tile_tissues(..., background_filter=False) on the same tissues is saved
as PREFIX.tiles-nofilter.npy (every tile touching the tissue polygons), for the coverage comparison.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def _corners(tiles) -> object:
    import numpy as np

    bounds = tiles.geometry.bounds  # minx, miny, maxx, maxy (level 0)
    return np.stack([bounds["minx"].to_numpy(), bounds["miny"].to_numpy()], axis=1).round().astype(np.int64)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("slide")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tile-px", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--config", default="default", help='"default" or "level=N"')
    parser.add_argument("--out-prefix", required=True)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import lazyslide as zs
    import numpy as np
    import wsidata
    from wsidata import open_wsi

    import_s = time.perf_counter() - t0

    tissue_kwargs: dict = {}
    if args.config.startswith("level="):
        tissue_kwargs["level"] = int(args.config.split("=", 1)[1])
    elif args.config != "default":
        parser.error(f"unknown --config {args.config}")

    calls = [
        "wsi = wsidata.open_wsi(slide)",
        "lazyslide.pp.find_tissues(wsi" + "".join(f", {k}={v!r}" for k, v in tissue_kwargs.items()) + ")",
        f"lazyslide.pp.tile_tissues(wsi, {args.tile_px}, mpp={args.mpp})",
    ]
    runs = []
    wsi = None
    for rep in range(args.warmup + args.reps):
        started = time.perf_counter()
        wsi = open_wsi(args.slide)
        opened = time.perf_counter()
        zs.pp.find_tissues(wsi, **tissue_kwargs)
        segmented = time.perf_counter()
        zs.pp.tile_tissues(wsi, args.tile_px, mpp=args.mpp)
        tiled = time.perf_counter()
        runs.append(
            {
                "warmup": rep < args.warmup,
                "open_s": opened - started,
                "find_tissues_s": segmented - opened,
                "tile_tissues_s": tiled - segmented,
                "total_s": tiled - started,
            }
        )
    assert wsi is not None
    tiles = wsi.shapes["tiles"]
    corners = _corners(tiles)
    np.save(f"{args.out_prefix}.tiles.npy", corners)
    spec = wsi.attrs["tile_spec"]["tiles"] if "tile_spec" in wsi.attrs else {}
    zs.pp.tile_tissues(wsi, args.tile_px, mpp=args.mpp, background_filter=False, key_added="tiles_nofilter")
    nofilter = _corners(wsi.shapes["tiles_nofilter"])
    np.save(f"{args.out_prefix}.tiles-nofilter.npy", nofilter)

    # the segmentation level find_tissues used (what "auto" resolves to on this slide)
    from lazyslide.preprocess import _tissue

    level = (
        _tissue._decide_level(wsi, tissue_kwargs.get("level", "auto"), proportion=0.8, in_bounds=True)
        if hasattr(_tissue, "_decide_level")
        else None
    )
    props = wsi.properties
    print(
        json.dumps(
            {
                "config": args.config,
                "calls": calls,
                "import_s": import_s,
                "runs": runs,
                "num_tiles": len(corners),
                "num_tiles_nofilter": len(nofilter),
                "num_tissues": len(wsi.shapes["tissues"]),
                "tile_size_level0": round(args.tile_px * args.mpp / props.mpp) if props.mpp else None,
                "tile_spec": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in spec.items()},
                "segmentation_level": None if level is None else int(level),
                "segmentation_level_downsample": None if level is None else float(props.level_downsample[int(level)]),
                "slide_mpp": props.mpp,
                "versions": {
                    "lazyslide": zs.__version__,
                    "wsidata": wsidata.__version__,
                    "python": sys.version.split()[0],
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
