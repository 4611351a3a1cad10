#!/usr/bin/env python
"""Segment + tile benchmark: AtlasPatch (otsu) in-process and as a whole process, side by side with LazySlide.

    .venv/bin/python bench/bench_segment_tile.py                 # builds bench/out/mosaic-32768-mpp0.5.tiff if needed
    .venv/bin/python bench/bench_segment_tile.py SLIDE [SLIDE …] --reps 5

Per slide, N timed repetitions (after one untimed warm-up each, so every tool reads from a warm page cache):

(a) in-process: open_slide → segment_slides([slide], OtsuSegmenter()) → write_tiled_h5(…, TileOptions(224, 20)),
    timed from open to H5 written (imports excluded);
(b) whole process: `atlaspatch segment-and-get-coords SLIDE -o TMP --patch-size 224 --target-mag 20 --segmenter otsu
    --device cpu --force` wall time (interpreter start and imports included), plus one `python -X importtime` run
    of the same command: is torch imported, which imports cost most;
(c) LazySlide in its own venv (bench/out/venv-lazyslide, see --setup-lazyslide): open_wsi → find_tissues →
    tile_tissues(wsi, 224, mpp=<the mpp of a 224 px patch at 20×>), timed the same way as (a); twice: defaults
    (find_tissues level="auto"), and find_tissues(level=L) at the pyramid level AtlasPatch reads its thumbnail from;
(d) coverage against an independent reference: the pyramid level at downsample 16 (or the nearest finer one), a
    pixel is tissue if its HSV saturation (OpenCV, 0–255) is > 20; a patch "has tissue" if ≥ 5 % of its pixels are.

Writes bench/out/segment_tile.md and bench/out/segment_tile.json and prints the Markdown.
Targets (reported, not asserted): (a) ≥ 2× faster than LazySlide while missing no tissue patch; (b) ≤ 2 s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
DEFAULT_SLIDE = OUT / "mosaic-32768-mpp0.5.tiff"
LAZYSLIDE_VENV = OUT / "venv-lazyslide"
REFERENCE_DOWNSAMPLE = 16
REFERENCE_SATURATION = 20
REFERENCE_FRACTION = 0.05
TARGET_SPEEDUP = 2.0
TARGET_PROCESS_S = 2.0


# --------------------------------------------------------------------------------------------------- helpers


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """Run a command; wall time, exit code, peak RSS (this child only, via wait4), stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "wall_s": wall,
            "rc": proc.returncode,
            "max_rss_mb": usage.ru_maxrss / 1024,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def machine_info() -> dict:
    import openslide
    import tifffile

    import atlaspatch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "atlaspatch": atlaspatch.__version__,
        "openslide-python": openslide.__version__,
        "openslide": openslide.__library_version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "h5py": h5py.__version__,
        "tifffile": tifffile.__version__,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }


# --------------------------------------------------------------------------------------------------- (a)


def atlaspatch_once(slide_path: Path, h5_dir: Path, patch_size: int, target_mag: int) -> dict:
    from atlaspatch.segmentation.otsu import OtsuSegmenter
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.stages.segment import segment_slides
    from atlaspatch.stages.tile import TileOptions, write_tiled_h5

    started = time.perf_counter()
    slide = open_slide(slide_path)
    try:
        opened = time.perf_counter()
        tissue = segment_slides([slide], OtsuSegmenter())[0]
        segmented = time.perf_counter()
        h5_path = h5_dir / f"{slide.stem}.h5"
        result = write_tiled_h5(h5_path, slide, tissue, TileOptions(patch_size=patch_size, target_mag=target_mag))
        tiled = time.perf_counter()
    finally:
        slide.close()
    return {
        "open_s": opened - started,
        "segment_s": segmented - opened,
        "tile_h5_s": tiled - segmented,
        "total_s": tiled - started,
        "num_patches": result.num_patches,
        "candidates": result.candidates,
        "h5": str(h5_path),
        "patch_size_level0": result.geometry.patch_size_level0,
        "step_size_level0": result.geometry.step_size_level0,
        "read_level": result.geometry.level,
        "thumbnail_shape": list(tissue.mask.shape),
        "thumbnail_downsample": list(tissue.downsample),
    }


def bench_inprocess(slide_path: Path, work: Path, reps: int, patch_size: int, target_mag: int) -> dict:
    h5_dir = work / "inprocess"
    h5_dir.mkdir(parents=True, exist_ok=True)
    warm = atlaspatch_once(slide_path, h5_dir, patch_size, target_mag)  # also pays the first-call imports
    runs = [atlaspatch_once(slide_path, h5_dir, patch_size, target_mag) for _ in range(reps)]
    with h5py.File(runs[-1]["h5"], "r") as handle:
        coords = handle["coords"][:, :2].astype(np.int64)
    np.save(work / "atlaspatch.tiles.npy", coords)
    out = {k: summarize([r[k] for r in runs]) for k in ("open_s", "segment_s", "tile_h5_s", "total_s")}
    out.update({k: runs[-1][k] for k in runs[-1] if not k.endswith("_s")})
    out["warmup_total_s"] = warm["total_s"]
    out["coords"] = coords
    return out


def stage_breakdown(slide_path: Path, patch_size: int, target_mag: int, reps: int = 3) -> dict:
    """The in-process path's building blocks called one by one on the main thread (median of `reps`).

    cProfile only sees the main thread, and segment_slides reads thumbnails on a worker thread, so this is the
    reliable per-step split. Best effort: if the package's internals move, the error is reported instead.
    """
    try:
        from atlaspatch.segmentation.contours import mask_to_contours
        from atlaspatch.segmentation.otsu import OtsuSegmenter
        from atlaspatch.segmentation.thumbnail import read_thumbnail
        from atlaspatch.slides.reader import open_slide
        from atlaspatch.tiling.geometry import plan_geometry
        from atlaspatch.tiling.lattice import TissueLattice
    except ImportError as exc:
        return {"error": repr(exc)}
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        started = time.perf_counter()
        value = fn(*args)
        steps.setdefault(name, []).append(time.perf_counter() - started)
        return value

    try:
        for _ in range(reps):
            slide = timed("open_slide", open_slide, slide_path)
            thumb = timed("read_thumbnail (thumbnail read + resize)", read_thumbnail, slide)
            masks = timed("OtsuSegmenter.predict (otsu mask)", OtsuSegmenter().predict, [thumb], [slide.mpp])
            mask = masks[0]
            contours = timed("mask_to_contours", mask_to_contours, mask, thumb.downsample)
            geometry = plan_geometry(slide, patch_size, None, target_mag)
            lattice = timed(
                "TissueLattice() (rasterise polygons + integral)", TissueLattice, contours, slide.dimensions, geometry
            )
            timed("TissueLattice.iter_kept (all bands)", list, lattice.iter_kept(0.0))
            slide.close()
    except Exception as exc:
        return {"error": repr(exc)}
    return {name: statistics.median(values) for name, values in steps.items()}


def profile_inprocess(slide_path: Path, work: Path, patch_size: int, target_mag: int, top: int = 15) -> dict:
    h5_dir = work / "profile"
    h5_dir.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    profiler.enable()
    atlaspatch_once(slide_path, h5_dir, patch_size, target_mag)
    profiler.disable()
    prof_path = work / "inprocess.prof"
    profiler.dump_stats(prof_path)
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if (
            filename == __file__
            or func.startswith("<method 'acquire'")
            or "threading.py" in filename
            or "concurrent/futures" in filename
        ):
            continue  # the bench's own wrapper and the main thread waiting on the thumbnail worker
        short = filename
        for marker in ("/atlaspatch/", "/site-packages/"):
            if marker in filename:
                short = ("atlaspatch/" if marker == "/atlaspatch/" else "") + filename.split(marker, 1)[1]
                break
        rows.append({"function": f"{short}:{line}({func})", "ncalls": ncalls, "tottime": tottime, "cumtime": cumtime})
    by_cum = sorted(
        (r for r in rows if r["function"].startswith("atlaspatch/")), key=lambda r: r["cumtime"], reverse=True
    )[:top]
    by_self = sorted(rows, key=lambda r: r["tottime"], reverse=True)[:top]
    return {
        "prof": str(prof_path),
        "by_cumulative": by_cum,
        "by_self": by_self,
        "stages": stage_breakdown(slide_path, patch_size, target_mag),
    }


# --------------------------------------------------------------------------------------------------- (b)


def atlaspatch_cli(python: Path) -> list[str]:
    script = python.parent / "atlaspatch"
    return [str(script)] if script.exists() else [str(python), "-m", "atlaspatch"]


def cli_args(slide_path: Path, out: Path, patch_size: int, target_mag: int) -> list[str]:
    return [
        "segment-and-get-coords",
        str(slide_path),
        "-o",
        str(out),
        "--patch-size",
        str(patch_size),
        "--target-mag",
        str(target_mag),
        "--segmenter",
        "otsu",
        "--device",
        "cpu",
        "--force",
    ]


def parse_importtime(stderr: str) -> dict:
    """`python -X importtime` lines: 'import time: self [us] | cumulative | package' (nesting by indentation)."""
    entries = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            entries.append(
                {
                    "module": match.group(4),
                    "self_s": int(match.group(1)) / 1e6,
                    "cumulative_s": int(match.group(2)) / 1e6,
                    "depth": (len(match.group(3)) - 1) // 2,
                }
            )
    modules = {e["module"] for e in entries}
    top_level = [e for e in entries if e["depth"] == 0]
    heavy = ("torch", "torchvision", "transformers", "timm", "sam2", "huggingface_hub", "scipy", "skimage", "pandas")
    return {
        "torch_imported": any(m == "torch" or m.startswith("torch.") for m in modules),
        "heavy_imported": sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in modules)),
        "modules": len(modules),
        "total_s": sum(e["cumulative_s"] for e in top_level),
        "top_level": sorted(top_level, key=lambda e: e["cumulative_s"], reverse=True)[:12],
        "top_self": sorted(entries, key=lambda e: e["self_s"], reverse=True)[:12],
    }


def bench_process(slide_path: Path, work: Path, reps: int, patch_size: int, target_mag: int) -> dict:
    out_dir = work / "cli"
    cmd = atlaspatch_cli(Path(sys.executable)) + cli_args(slide_path, out_dir, patch_size, target_mag)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    runs = []
    for rep in range(reps + 1):
        result = run_child(cmd, env=env)
        if result["rc"] != 0:
            raise RuntimeError(f"atlaspatch failed (rc {result['rc']}):\n{result['stdout']}\n{result['stderr']}")
        if rep:  # the first run is the warm-up
            runs.append(result)
    h5s = list((out_dir / "patches").glob("*.h5"))
    with h5py.File(h5s[0], "r") as handle:
        num_patches = int(handle.attrs["num_patches"])
    imp = run_child(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "atlaspatch",
            *cli_args(slide_path, work / "cli-importtime", patch_size, target_mag),
        ],
        env=env,
    )
    return {
        "command": " ".join(["atlaspatch", *cli_args(slide_path, Path("TMP"), patch_size, target_mag)]),
        "wall_s": summarize([r["wall_s"] for r in runs]),
        "max_rss_mb": max(r["max_rss_mb"] for r in runs),
        "num_patches": num_patches,
        "importtime": parse_importtime(imp["stderr"]),
        "importtime_run_wall_s": imp["wall_s"],
    }


# --------------------------------------------------------------------------------------------------- (c)


def setup_lazyslide(venv: Path) -> None:
    if (venv / "bin" / "python").exists():
        return
    print(f"creating {venv} and installing lazyslide (several GB: it pulls torch) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "lazyslide"], check=True)


def bench_lazyslide(venv: Path, slide_path: Path, work: Path, reps: int, tile_px: int, mpp: float, config: str) -> dict:
    prefix = work / f"lazyslide-{config.replace('=', '')}"
    cmd = [
        str(venv / "bin" / "python"),
        str(BENCH / "lazyslide_runner.py"),
        str(slide_path),
        "--reps",
        str(reps),
        "--tile-px",
        str(tile_px),
        "--mpp",
        repr(mpp),
        "--config",
        config,
        "--out-prefix",
        str(prefix),
    ]
    result = run_child(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result["rc"] != 0:
        raise RuntimeError(f"lazyslide runner failed (rc {result['rc']}):\n{result['stderr'][-4000:]}")
    data = json.loads(result["stdout"].strip().splitlines()[-1])
    runs = [r for r in data["runs"] if not r["warmup"]]
    data["timing"] = {
        k: summarize([r[k] for r in runs]) for k in ("open_s", "find_tissues_s", "tile_tissues_s", "total_s")
    }
    data["process_wall_s"] = result["wall_s"]
    data["max_rss_mb"] = result["max_rss_mb"]
    data["coords"] = np.load(f"{prefix}.tiles.npy")
    data["coords_nofilter"] = np.load(f"{prefix}.tiles-nofilter.npy")
    return data


# --------------------------------------------------------------------------------------------------- (d)


class Reference:
    """Tissue pixels of one pyramid level by a saturation threshold, with an integral image for box sums."""

    def __init__(self, slide_path: Path) -> None:
        import openslide

        with openslide.OpenSlide(str(slide_path)) as slide:
            downsamples = list(slide.level_downsamples)
            finer = [i for i, d in enumerate(downsamples) if d <= REFERENCE_DOWNSAMPLE * 1.01]
            level = max(finer, key=lambda i: downsamples[i])
            width, height = slide.level_dimensions[level]
            rgba = np.asarray(slide.read_region((0, 0), level, (width, height)))
            self.width0, self.height0 = slide.dimensions
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        self.rgb = rgb
        self.level, self.downsample = level, downsamples[level]
        self.mask = (cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > REFERENCE_SATURATION).astype(np.uint8)
        self.integral = cv2.integral(self.mask, sdepth=cv2.CV_64F)
        # connected tissue objects (8-connected), for telling missed debris specks from missed tissue
        _, self.labels, stats, _ = cv2.connectedComponentsWithStats(self.mask, connectivity=8)
        self.object_px = stats[:, cv2.CC_STAT_AREA]

    def object_um2(self, mpp: float) -> np.ndarray:
        return self.object_px * (self.downsample * mpp) ** 2

    def boxes(self, corners: np.ndarray, size0: int) -> tuple[np.ndarray, ...]:
        h, w = self.mask.shape
        x0 = np.clip(np.round(corners[:, 0] / self.downsample).astype(np.int64), 0, w)
        y0 = np.clip(np.round(corners[:, 1] / self.downsample).astype(np.int64), 0, h)
        x1 = np.clip(np.round((corners[:, 0] + size0) / self.downsample).astype(np.int64), 0, w)
        y1 = np.clip(np.round((corners[:, 1] + size0) / self.downsample).astype(np.int64), 0, h)
        return x0, y0, x1, y1

    @staticmethod
    def box_sums(integral: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]

    def fractions(self, corners: np.ndarray, size0: int, integral: np.ndarray | None = None) -> np.ndarray:
        area = (size0 / self.downsample) ** 2  # the whole patch, also where it hangs over the slide's edge
        return self.box_sums(self.integral if integral is None else integral, *self.boxes(corners, size0)) / area

    def covered(self, corners: np.ndarray, size0: int) -> np.ndarray:
        covered = np.zeros_like(self.mask)
        for x0, y0, x1, y1 in zip(*self.boxes(corners, size0), strict=True):
            covered[y0:y1, x0:x1] = 1
        return covered


def coverage(
    ref: Reference,
    lattice: np.ndarray,
    size0: int,
    name: str,
    corners: np.ndarray,
    mpp: float,
    overlay: Path | None = None,
) -> dict:
    """How one tool's kept tiles relate to the reference tissue.

    - kept tiles with / without reference tissue (on the tool's own tiles);
    - reference tissue pixels outside every kept tile (grid-independent);
    - missed tissue patches on the common lattice (AtlasPatch's slide-global grid): a lattice patch is missed when
      the tissue the tool left uncovered inside it alone reaches the "has tissue" rule (≥ 5 % of the patch). For a
      tool on this same lattice that is exactly "a tissue patch that was not kept".
    """
    kept_frac = ref.fractions(corners, size0) if len(corners) else np.zeros(0)
    covered = ref.covered(corners, size0)
    uncovered = (ref.mask & (1 - covered)).astype(np.uint8)
    unc_integral = cv2.integral(uncovered, sdepth=cv2.CV_64F)
    lattice_frac = ref.fractions(lattice, size0)
    missed = ref.fractions(lattice, size0, unc_integral) >= REFERENCE_FRACTION
    tissue_px = int(ref.mask.sum())
    patch_px = (size0 / ref.downsample) ** 2
    # what the missed patches hold: the largest reference object (level-0 µm²) among their uncovered tissue pixels
    object_um2 = ref.object_um2(mpp)
    sizes = []
    for x0, y0, x1, y1 in zip(*ref.boxes(lattice[missed], size0), strict=True):
        labels = ref.labels[y0:y1, x0:x1][uncovered[y0:y1, x0:x1] > 0]
        sizes.append(float(object_um2[labels].max()) if labels.size else 0.0)
    sizes_arr = np.asarray(sizes)
    if overlay is not None:
        image = cv2.cvtColor(ref.rgb, cv2.COLOR_RGB2BGR)
        kept = ref.covered(corners, size0) > 0
        image[kept] = (0.6 * image[kept] + 0.4 * np.array([0, 200, 0])).astype(np.uint8)
        for x0, y0, x1, y1 in zip(*ref.boxes(lattice[missed], size0), strict=True):
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (0, 0, 255), 1)
        cv2.imwrite(str(overlay), image)
    return {
        "tool": name,
        "kept": len(corners),
        "kept_with_tissue": int((kept_frac >= REFERENCE_FRACTION).sum()),
        "kept_without_tissue": int((kept_frac < REFERENCE_FRACTION).sum()),
        "kept_without_any_tissue_px": int((kept_frac == 0).sum()),
        "lattice_tissue_patches": int((lattice_frac >= REFERENCE_FRACTION).sum()),
        "missed_tissue_patches": int(missed.sum()),
        "uncovered_tissue_fraction": float(uncovered.sum() / tissue_px) if tissue_px else 0.0,
        "uncovered_tissue_patch_equivalents": float(uncovered.sum() / patch_px),
        # missed patches whose uncovered tissue belongs to objects < 0.01 mm² (specks / debris) vs larger tissue
        "missed_in_objects_lt_0.01mm2": int((sizes_arr < 10_000).sum()),
        "missed_in_objects_ge_0.01mm2": int((sizes_arr >= 10_000).sum()),
        "missed_largest_object_um2": sorted(sizes, reverse=True)[:10],
        "overlay": str(overlay) if overlay else None,
    }


# --------------------------------------------------------------------------------------------------- report


def fmt(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Segment + tile benchmark: AtlasPatch (otsu) vs LazySlide",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}",
        f"Python {m['python']}; atlaspatch {m['atlaspatch']}; openslide {m['openslide']} (openslide-python "
        f"{m['openslide-python']}); numpy {m['numpy']}; opencv {m['opencv']}; h5py {m['h5py']}"
        + (
            f"; lazyslide {results['lazyslide_versions'].get('lazyslide')}, wsidata "
            f"{results['lazyslide_versions'].get('wsidata')} (own venv)"
            if results.get("lazyslide_versions")
            else ""
        ),
        f"Repetitions: {results['reps']} timed after 1 warm-up (warm page cache); times in seconds. Load average "
        f"(1, 5, 15 min) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}: other work on the machine "
        "shows up as noise.",
        "",
    ]
    for s in results["slides"]:
        a, b = s["inprocess"], s["process"]
        lines += [
            f"## {Path(s['slide']).name}",
            "",
            f"{s['width']}×{s['height']} px, mpp {s['mpp']:g} ({s['magnification']}×), levels "
            f"{s['level_downsamples']}, {s['file_mb']:.0f} MB; patch {s['patch_size']} px at {s['target_mag']}× "
            f"(= {s['patch_size_level0']} level-0 px, LazySlide mpp={s['lazyslide_mpp']:g}); "
            f"{s['lattice_candidates']} lattice positions.",
            "",
            "| run | median | min | tiles | notes |",
            "|---|---:|---:|---:|---|",
            f"| (a) AtlasPatch in-process: open → otsu → H5 | **{fmt(a['total_s']['median'])}** | "
            f"{fmt(a['total_s']['min'])} | {a['num_patches']} | open {fmt(a['open_s']['median'])}, segment "
            f"{fmt(a['segment_s']['median'])}, tile+H5 {fmt(a['tile_h5_s']['median'])}; thumbnail "
            f"{a['thumbnail_shape'][1]}×{a['thumbnail_shape'][0]} (ds {a['thumbnail_downsample'][0]:.0f}) |",
            f"| (b) `atlaspatch segment-and-get-coords` whole process | **{fmt(b['wall_s']['median'])}** | "
            f"{fmt(b['wall_s']['min'])} | {b['num_patches']} | peak RSS {b['max_rss_mb']:.0f} MB; imports "
            f"{fmt(b['importtime']['total_s'])} s (-X importtime); torch imported: "
            f"{'**yes**' if b['importtime']['torch_imported'] else 'no'} |",
        ]
        for lz in s.get("lazyslide", []):
            t = lz["timing"]
            lines.append(
                f"| (c) LazySlide `{lz['config']}` in-process: open_wsi → find_tissues → tile_tissues | "
                f"**{fmt(t['total_s']['median'])}** | {fmt(t['total_s']['min'])} | {lz['num_tiles']} | "
                f"find_tissues {fmt(t['find_tissues_s']['median'])} (level {lz['segmentation_level']}, ds "
                f"{lz['segmentation_level_downsample']:g}), tile_tissues {fmt(t['tile_tissues_s']['median'])}; "
                f"import {fmt(lz['import_s'])}; {lz['num_tissues']} tissues; peak RSS {lz['max_rss_mb']:.0f} MB |"
            )
        lines.append("")
        if s.get("lazyslide"):
            lines += ["Speed (LazySlide median / AtlasPatch in-process median; target ≥ 2×):", ""]
            for lz in s["lazyslide"]:
                ratio = lz["timing"]["total_s"]["median"] / a["total_s"]["median"]
                lines.append(
                    f"- vs LazySlide `{lz['config']}`: **{ratio:.1f}×** "
                    f"({'meets' if ratio >= TARGET_SPEEDUP else 'MISSES'} the 2× target)"
                )
            lines.append("")
        proc = b["wall_s"]["median"]
        lines += [
            f"Whole process: **{proc:.2f} s** median ({'meets' if proc <= TARGET_PROCESS_S else 'MISSES'} the "
            f"≤ {TARGET_PROCESS_S:g} s target on {m['cores']} cores).",
            "",
        ]
        lines += [
            f"Coverage vs reference (level {s['reference']['level']}, ds {s['reference']['downsample']:g}: "
            f"HSV saturation > {REFERENCE_SATURATION}; a patch has tissue if ≥ {REFERENCE_FRACTION:.0%} of its "
            f"pixels are; {s['reference']['tissue_fraction']:.1%} of the slide is tissue; "
            f"{s['coverage'][0]['lattice_tissue_patches']} tissue patches on AtlasPatch's slide-global lattice):",
            "",
            "| tiles of | kept | kept with tissue | kept without tissue (no tissue px at all) | missed tissue "
            "patches (common lattice) | … of them specks < 0.01 mm² | tissue outside all kept tiles |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in s["coverage"]:
            lines.append(
                f"| {c['tool']} | {c['kept']} | {c['kept_with_tissue']} | {c['kept_without_tissue']} "
                f"({c['kept_without_any_tissue_px']}) | **{c['missed_tissue_patches']}** | "
                f"{c['missed_in_objects_lt_0.01mm2']} | "
                f"{c['uncovered_tissue_fraction']:.2%} (≈ {c['uncovered_tissue_patch_equivalents']:.0f} patches) |"
            )
        lines.append("")
        imp = b["importtime"]
        lines += [
            "Whole-process imports (python -X importtime, top-level modules by cumulative time): "
            + ", ".join(f"{e['module']} {e['cumulative_s']:.2f}" for e in imp["top_level"][:8])
            + f"; heavy modules imported: {', '.join(imp['heavy_imported']) or 'none'}.",
            "",
        ]
        if s.get("profile"):
            stages = s["profile"]["stages"]
            lines += ["In-process steps, called one by one on the main thread (median of 3; seconds):", ""]
            if "error" in stages:
                lines += [f"(not available: {stages['error']})", ""]
            else:
                lines += ["| step | seconds |", "|---|---:|"]
                lines += [f"| {name} | {sec:.3f} |" for name, sec in stages.items()]
                lines.append("")
            lines += [
                "In-process cProfile (one run, main thread only — the thumbnail read runs on a worker thread and "
                f"shows up only in the table above; profiler overhead included; {s['profile']['prof']}):",
                "",
                "| atlaspatch function | calls | cumulative | self |",
                "|---|---:|---:|---:|",
            ]
            for r in s["profile"]["by_cumulative"][:12]:
                lines.append(f"| `{r['function']}` | {r['ncalls']} | {r['cumtime']:.3f} | {r['tottime']:.3f} |")
            lines += ["", "| top self time (any code) | calls | self |", "|---|---:|---:|"]
            for r in s["profile"]["by_self"][:8]:
                lines.append(f"| `{r['function']}` | {r['ncalls']} | {r['tottime']:.3f} |")
            lines.append("")
    lines += [
        *(
            [
                f"Calls timed for LazySlide `{lz['config']}`: " + "; ".join(f"`{c}`" for c in lz["calls"]) + "."
                for lz in results["slides"][0]["lazyslide"]
            ]
            if results["slides"] and results["slides"][0].get("lazyslide")
            else ["LazySlide: skipped."]
        ),
        "",
        "LazySlide keeps tiles on a grid anchored per tissue polygon and drops tiles with > 30 % background "
        "(tile_tissues defaults: background_filter=True, background_fraction=0.3); `… (no bg filter)` rows are "
        "the same tissues tiled with background_filter=False (untimed). LazySlide's result stays in memory "
        "(no file written); AtlasPatch's time includes writing the H5.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


def slide_info(slide_path: Path, patch_size: int, target_mag: int) -> dict:
    from atlaspatch.segmentation.thumbnail import thumbnail_size
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.tiling.geometry import plan_geometry
    from atlaspatch.tiling.lattice import lattice_positions

    with open_slide(slide_path) as slide:
        geometry = plan_geometry(slide, patch_size, None, target_mag)
        width, height = slide.dimensions
        thumb_w, _ = thumbnail_size(width, height, slide.magnification)
        thumb_level = slide.best_level_for_downsample(width / thumb_w)
        xs = lattice_positions(width, geometry.step_size_level0)
        ys = lattice_positions(height, geometry.step_size_level0)
        lattice = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        return {
            "slide": str(slide_path),
            "width": width,
            "height": height,
            "mpp": slide.mpp,
            "magnification": slide.magnification,
            "level_downsamples": [round(d, 3) for d in slide.reader.level_downsamples],
            "file_mb": slide_path.stat().st_size / 1e6,
            "patch_size": patch_size,
            "target_mag": target_mag,
            "patch_size_level0": geometry.patch_size_level0,
            # the mpp at which a patch_size-px tile spans the same level-0 pixels as ours
            "lazyslide_mpp": round(slide.mpp * geometry.patch_size_level0 / patch_size, 6),
            "thumbnail_level": thumb_level,
            "lattice": lattice,
            "lattice_candidates": len(lattice),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "slides",
        nargs="*",
        type=Path,
        help=f"default: {DEFAULT_SLIDE.relative_to(REPO)} (built "
        "with make_slide.py --size 32768 --mpp 0.5 --seed 0 if missing)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--target-mag", type=int, default=20)
    parser.add_argument("--lazyslide-venv", type=Path, default=LAZYSLIDE_VENV)
    parser.add_argument("--setup-lazyslide", action="store_true", help="create the LazySlide venv if missing")
    parser.add_argument("--skip-lazyslide", action="store_true")
    parser.add_argument(
        "--lazyslide-configs",
        default="default,thumbnail-level",
        help='comma-separated: "default", "thumbnail-level" (find_tissues at the level AtlasPatch '
        'reads its thumbnail from) or "level=N"',
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of the in-process path")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    slides = args.slides or [DEFAULT_SLIDE]
    if not args.slides and not DEFAULT_SLIDE.exists():
        sys.path.insert(0, str(BENCH))
        import make_slide

        make_slide.main([str(DEFAULT_SLIDE), "--size", "32768", "--mpp", "0.5", "--seed", "0"])
    use_lazyslide = not args.skip_lazyslide
    if use_lazyslide:
        if args.setup_lazyslide:
            setup_lazyslide(args.lazyslide_venv)
        if not (args.lazyslide_venv / "bin" / "python").exists():
            print(
                f"no LazySlide venv at {args.lazyslide_venv}: pass --setup-lazyslide (or --skip-lazyslide)",
                file=sys.stderr,
            )
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine_info(), "reps": args.reps, "slides": []}
    started = time.perf_counter()
    for slide_path in slides:
        slide_path = slide_path.resolve()
        work = args.out / "work" / slide_path.stem
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        info = slide_info(slide_path, args.patch_size, args.target_mag)
        lattice = info.pop("lattice")
        print(f"[{slide_path.name}] (a) in-process …", file=sys.stderr)
        a = bench_inprocess(slide_path, work, args.reps, args.patch_size, args.target_mag)
        ours = a.pop("coords")
        print(f"[{slide_path.name}] (b) whole process …", file=sys.stderr)
        b = bench_process(slide_path, work, args.reps, args.patch_size, args.target_mag)
        entry = {**info, "inprocess": a, "process": b}
        lazies = []
        if use_lazyslide:
            for config in args.lazyslide_configs.split(","):
                config = f"level={info['thumbnail_level']}" if config == "thumbnail-level" else config
                if any(lz["config"] == config for lz in lazies):
                    continue
                print(f"[{slide_path.name}] (c) LazySlide {config} …", file=sys.stderr)
                lazies.append(
                    bench_lazyslide(
                        args.lazyslide_venv, slide_path, work, args.reps, args.patch_size, info["lazyslide_mpp"], config
                    )
                )
            results["lazyslide_versions"] = lazies[0]["versions"] if lazies else {}
        print(f"[{slide_path.name}] (d) coverage …", file=sys.stderr)
        ref = Reference(slide_path)
        size0 = info["patch_size_level0"]
        mpp = info["mpp"]
        cov = [coverage(ref, lattice, size0, "AtlasPatch (otsu)", ours, mpp, work / "coverage-atlaspatch.png")]
        for lz in lazies:
            tag = lz["config"].replace("=", "")
            lz_size0 = lz["tile_size_level0"] or size0
            cov.append(
                coverage(
                    ref,
                    lattice,
                    lz_size0,
                    f"LazySlide `{lz['config']}`",
                    lz.pop("coords"),
                    mpp,
                    work / f"coverage-lazyslide-{tag}.png",
                )
            )
            cov.append(
                coverage(
                    ref, lattice, lz_size0, f"LazySlide `{lz['config']}` (no bg filter)", lz.pop("coords_nofilter"), mpp
                )
            )
        entry["reference"] = {
            "level": ref.level,
            "downsample": ref.downsample,
            "tissue_fraction": float(ref.mask.mean()),
        }
        entry["coverage"] = cov
        entry["lazyslide"] = lazies
        if not args.no_profile:
            entry["profile"] = profile_inprocess(slide_path, work, args.patch_size, args.target_mag)
        results["slides"].append(entry)
    results["bench_seconds"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    text = markdown(results)
    (args.out / "segment_tile.md").write_text(text + "\n")
    (args.out / "segment_tile.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(text)
    print(
        f"(benchmark took {results['bench_seconds']:.0f} s; wrote {args.out / 'segment_tile.md'} and .json)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
