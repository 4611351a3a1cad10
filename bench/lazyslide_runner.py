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

Server mode (what bench_segment_tile.py uses, so that its repetitions can be interleaved with the other tools'
while LazySlide is imported once):

    bench/out/venv-lazyslide/bin/python bench/lazyslide_runner.py --serve

reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"op": "rep", "slide": S, "config": C, "tile_px": 224, "mpp": 0.5}      → one timed repetition
    {"op": "save", "slide": S, "config": C, "tile_px": 224, "mpp": 0.5, "out_prefix": P}
                                              → (untimed) the tiles files above and the "info" fields of the JSON
    {"op": "quit"}
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


def _tissue_kwargs(config: str) -> dict:
    if config.startswith("level="):
        return {"level": int(config.split("=", 1)[1])}
    if config != "default":
        raise ValueError(f"unknown config {config}")
    return {}


def _calls(config: str, tile_px: int, mpp: float) -> list[str]:
    return [
        "wsi = wsidata.open_wsi(slide)",
        "lazyslide.pp.find_tissues(wsi" + "".join(f", {k}={v!r}" for k, v in _tissue_kwargs(config).items()) + ")",
        f"lazyslide.pp.tile_tissues(wsi, {tile_px}, mpp={mpp})",
    ]


def one_rep(slide: str, config: str, tile_px: int, mpp: float) -> tuple[dict, object]:
    import lazyslide as zs
    from wsidata import open_wsi

    started = time.perf_counter()
    wsi = open_wsi(slide)
    opened = time.perf_counter()
    zs.pp.find_tissues(wsi, **_tissue_kwargs(config))
    segmented = time.perf_counter()
    zs.pp.tile_tissues(wsi, tile_px, mpp=mpp)
    tiled = time.perf_counter()
    timing = {
        "open_s": opened - started,
        "find_tissues_s": segmented - opened,
        "tile_tissues_s": tiled - segmented,
        "total_s": tiled - started,
        "num_tiles": len(wsi.shapes["tiles"]),
    }
    return timing, wsi


def save_info(wsi, config: str, tile_px: int, mpp: float, out_prefix: str) -> dict:
    """Untimed: tiles (+ tiles without the background filter) saved as .npy, and what LazySlide decided."""
    import lazyslide as zs
    import numpy as np
    import wsidata

    corners = _corners(wsi.shapes["tiles"])
    np.save(f"{out_prefix}.tiles.npy", corners)
    spec = wsi.attrs["tile_spec"]["tiles"] if "tile_spec" in wsi.attrs else {}
    zs.pp.tile_tissues(wsi, tile_px, mpp=mpp, background_filter=False, key_added="tiles_nofilter")
    nofilter = _corners(wsi.shapes["tiles_nofilter"])
    np.save(f"{out_prefix}.tiles-nofilter.npy", nofilter)
    from lazyslide.preprocess import _tissue

    tissue_kwargs = _tissue_kwargs(config)
    level = (
        _tissue._decide_level(wsi, tissue_kwargs.get("level", "auto"), proportion=0.8, in_bounds=True)
        if hasattr(_tissue, "_decide_level")
        else None
    )
    props = wsi.properties
    return {
        "config": config,
        "calls": _calls(config, tile_px, mpp),
        "num_tiles": len(corners),
        "num_tiles_nofilter": len(nofilter),
        "num_tissues": len(wsi.shapes["tissues"]),
        "tile_size_level0": round(tile_px * mpp / props.mpp) if props.mpp else None,
        "tile_spec": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in spec.items()},
        "segmentation_level": None if level is None else int(level),
        "segmentation_level_downsample": None if level is None else float(props.level_downsample[int(level)]),
        "slide_mpp": props.mpp,
        "versions": {"lazyslide": zs.__version__, "wsidata": wsidata.__version__, "python": sys.version.split()[0]},
    }


def serve() -> int:
    """JSON commands on stdin, one JSON answer per line on stdout (see the module docstring)."""
    import os

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import lazyslide  # noqa: F401
    import wsidata  # noqa: F401

    import_s = time.perf_counter() - t0
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything LazySlide prints goes to stderr, never into the answers
    out.write(json.dumps({"ready": True, "import_s": import_s}) + "\n")
    last: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "quit":
                break
            key = (cmd["slide"], cmd["config"], cmd["tile_px"], cmd["mpp"])
            if cmd["op"] == "rep":
                timing, wsi = one_rep(*key)
                last = {key: wsi}  # keep only the latest (LazySlide's default holds GBs)
                answer = timing
            elif cmd["op"] == "save":
                wsi = last.get(key) or one_rep(*key)[1]
                answer = save_info(wsi, cmd["config"], cmd["tile_px"], cmd["mpp"], cmd["out_prefix"])
            else:
                answer = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:
            answer = {"error": repr(exc)}
        out.write(json.dumps(answer) + "\n")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--serve"]:
        return serve()
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
    try:
        _tissue_kwargs(args.config)
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    import lazyslide  # noqa: F401
    import wsidata  # noqa: F401

    import_s = time.perf_counter() - t0
    runs = []
    wsi = None
    for rep in range(args.warmup + args.reps):
        timing, wsi = one_rep(args.slide, args.config, args.tile_px, args.mpp)
        runs.append({"warmup": rep < args.warmup, **timing})
    assert wsi is not None
    info = save_info(wsi, args.config, args.tile_px, args.mpp, args.out_prefix)
    print(json.dumps({**info, "import_s": import_s, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
