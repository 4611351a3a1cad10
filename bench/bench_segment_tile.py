#!/usr/bin/env python
"""Segment + tile benchmark on a slide set: AtlasPatch (otsu, sam2 on CPU) vs LazySlide tissue detection + tiling.

    .venv/bin/python bench/bench_segment_tile.py                 # the default slide set (built if missing)
    .venv/bin/python bench/bench_segment_tile.py SLIDE [SLIDE …] --reps 5 --segmenters otsu,sam2

The default slide set (bench/make_slide.py mosaics of real H&E tissue, cached in bench/out/): 20× (0.5 µm/px)
32768² dense and sparse, 40× (0.25 µm/px) 49152² dense and sparse. Per slide, these runs, each repeated --reps
times after one untimed warm-up, interleaved round by round (the order rotates every round), every run inside an
exclusive flock on /tmp/atlaspatch-bench.lock so that it never overlaps another benchmark on the machine:

- AtlasPatch in-process, per segmenter: open_slide → segment_slides([slide], SEGMENTER) → write_tiled_h5(…,
  TileOptions(224, 20)), timed from open to H5 written (imports and the segmenter's construction excluded: the
  SAM2 model is loaded once, like LazySlide's imports);
- AtlasPatch whole process, per segmenter: `atlaspatch segment-and-get-coords SLIDE -o TMP --patch-size 224
  --target-mag 20 --segmenter S --device cpu --force` (+ `--model-dir` for sam2), wall time; sam2 gets
  --sam2-cli-reps repetitions (default 3);
- LazySlide (bench/lazyslide_runner.py --serve in its own venv, imported once): open_wsi → find_tissues →
  tile_tissues(wsi, 224, mpp=<the mpp of a 224 px patch at 20×>), timed from open to tiles in memory; twice:
  defaults (find_tissues level="auto") and find_tissues(level=L) at the pyramid level AtlasPatch reads its
  thumbnail from.

SAM2's weights cannot be downloaded here: the benchmark writes **random-init** weights of the real architecture
(SAM2.1 hiera-tiny, `{"model": state_dict}` like AtlasPatch's model.pth) to bench/out/sam2-random-weights/sam2/
and passes that directory as --model-dir. Its time is real, its mask is meaningless: coverage is reported for otsu
and LazySlide only. Coverage is measured against an independent reference (pyramid level at downsample 16, HSV
saturation > 20; a patch has tissue if ≥ 5 % of its pixels are).

Writes bench/out/segment_tile.md + .json and docs/img/segment_tile_*.png (--plots-only JSON redraws the plots).
Targets (reported, not asserted): ≥ 2× faster than LazySlide; the otsu whole process ≤ 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import fcntl
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
IMG = REPO / "docs" / "img"
DEFAULT_SLIDE = OUT / "mosaic-32768-mpp0.5.tiff"  # the set's 20× dense slide (also otsu_variants.py's default)
LAZYSLIDE_VENV = OUT / "venv-lazyslide"
SAM2_WEIGHTS_DIR = OUT / "sam2-random-weights"
LOCK_PATH = Path("/tmp/atlaspatch-bench.lock")
REFERENCE_DOWNSAMPLE = 16
REFERENCE_SATURATION = 20
REFERENCE_FRACTION = 0.05
TARGET_SPEEDUP = 2.0
TARGET_PROCESS_S = 2.0

# (label, file under bench/out, make_slide.py arguments)
SLIDE_SET = [
    ("20× dense", "mosaic-32768-mpp0.5.tiff", ["--size", "32768", "--mpp", "0.5", "--seed", "0"]),
    ("20× sparse", "mosaic-32768-mpp0.5-sparse.tiff", ["--size", "32768", "--mpp", "0.5", "--seed", "1", "--sparse"]),
    ("40× dense", "mosaic-49152-mpp0.25.tiff", ["--size", "49152", "--mpp", "0.25", "--seed", "0"]),
    (
        "40× sparse",
        "mosaic-49152-mpp0.25-sparse.tiff",
        ["--size", "49152", "--mpp", "0.25", "--seed", "1", "--sparse"],
    ),
]


# --------------------------------------------------------------------------------------------------- helpers


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """Run a command; wall time, exit code, peak RSS, stdout and stderr.

    The peak RSS comes from GNU time (`/usr/bin/time -f %M`), not from this process's wait4: Linux carries the
    forking parent's RSS high-water mark across exec, so a child of this (large, once SAM2 is loaded) process
    would report at least this process's peak.
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rss:
        argv = [str(gnu_time), "-f", "%M", "-o", rss.name, *cmd] if gnu_time.exists() else cmd
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=REPO)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        try:
            max_rss_mb = int(Path(rss.name).read_text().split()[-1]) / 1024
        except (OSError, ValueError, IndexError):
            max_rss_mb = float("nan")
        return {
            "wall_s": wall,
            "rc": proc.returncode,
            "max_rss_mb": max_rss_mb,
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


class BenchLock:
    """An exclusive flock(2) on LOCK_PATH around each timed run (the same lock as `flock LOCK_PATH cmd`)."""

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by children (O_CLOEXEC)
        self.waited_s = 0.0
        self.depth = 0  # re-entrant: an inner held() inside an outer one does nothing

    @contextlib.contextmanager
    def held(self):
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        started = time.perf_counter()
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.waited_s += time.perf_counter() - started
        self.depth = 1
        try:
            yield
        finally:
            self.depth = 0
            fcntl.flock(self.fd, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------- AtlasPatch


def atlaspatch_once(slide_path: Path, h5_dir: Path, patch_size: int, target_mag: int, segmenter) -> dict:
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.stages.segment import segment_slides
    from atlaspatch.stages.tile import TileOptions, write_tiled_h5

    started = time.perf_counter()
    slide = open_slide(slide_path)
    try:
        opened = time.perf_counter()
        tissue = segment_slides([slide], segmenter)[0]
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
        "mask_fraction": float(tissue.mask.mean()),
    }


def ensure_sam2_weights(model_dir: Path) -> Path:
    """Random-init SAM2.1 hiera-tiny weights in AtlasPatch's on-disk format at MODEL_DIR/sam2/model.pth."""
    path = model_dir / "sam2" / "model.pth"
    if path.exists():
        return path
    import torch

    from atlaspatch.segmentation.sam2 import build_sam2_tiny

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tmp = path.with_name(".model.pth.partial")
    torch.save({"model": build_sam2_tiny().state_dict()}, tmp)
    tmp.replace(path)
    (model_dir / "README.md").write_text(
        "RANDOM-INIT weights of the SAM2.1 hiera-tiny architecture (torch.manual_seed(0)), saved as\n"
        '{"model": state_dict} like AtlasAnalyticsLab/AtlasPatch model.pth, written by bench/bench_segment_tile.py.\n'
        "For timing only: the masks they give are meaningless.\n"
    )
    return path


def load_segmenter(name: str, model_dir: Path | None) -> tuple[object, float]:
    from atlaspatch.segmentation import build_segmenter

    started = time.perf_counter()
    segmenter = build_segmenter(name, device="cpu", model_dir=model_dir)
    return segmenter, time.perf_counter() - started


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
    from atlaspatch.segmentation.otsu import OtsuSegmenter

    h5_dir = work / "profile"
    h5_dir.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    profiler.enable()
    atlaspatch_once(slide_path, h5_dir, patch_size, target_mag, OtsuSegmenter())
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


# --------------------------------------------------------------------------------------------------- whole process


def atlaspatch_cli(python: Path) -> list[str]:
    script = python.parent / "atlaspatch"
    return [str(script)] if script.exists() else [str(python), "-m", "atlaspatch"]


def cli_args(
    slide_path: Path, out: Path, patch_size: int, target_mag: int, segmenter: str, model_dir: Path | None
) -> list[str]:
    args = [
        "segment-and-get-coords",
        str(slide_path),
        "-o",
        str(out),
        "--patch-size",
        str(patch_size),
        "--target-mag",
        str(target_mag),
        "--segmenter",
        segmenter,
        "--device",
        "cpu",
        "--force",
    ]
    return args + (["--model-dir", str(model_dir)] if model_dir is not None else [])


def cli_env() -> dict:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}


def cli_once(cmd: list[str]) -> dict:
    result = run_child(cmd, env=cli_env())
    if result["rc"] != 0:
        raise RuntimeError(f"atlaspatch failed (rc {result['rc']}):\n{result['stdout']}\n{result['stderr']}")
    return {"total_s": result["wall_s"], "max_rss_mb": result["max_rss_mb"]}


def cli_num_patches(out_dir: Path) -> int:
    h5s = list((out_dir / "patches").glob("*.h5"))
    with h5py.File(h5s[0], "r") as handle:
        return int(handle.attrs["num_patches"])


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


# --------------------------------------------------------------------------------------------------- LazySlide setup


def setup_lazyslide(venv: Path) -> None:
    if (venv / "bin" / "python").exists():
        return
    print(f"creating {venv} and installing lazyslide (several GB: it pulls torch) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "lazyslide"], check=True)


# --------------------------------------------------------------------------------------------------- LazySlide


class LazyServer:
    """bench/lazyslide_runner.py --serve in LazySlide's venv: imported once, one JSON command per repetition."""

    def __init__(self, venv: Path, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "python"), str(BENCH / "lazyslide_runner.py"), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        self.import_s = self._read()["import_s"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"lazyslide_runner --serve died (rc {self.proc.poll()}); see {self.log.name}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"lazyslide_runner: {answer['error']}; see {self.log.name}")
        return answer

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def reset_peak_rss(self) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM

    def peak_rss_mb(self) -> float | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


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

TOOL_ORDER = [
    "atlaspatch-otsu",
    "atlaspatch-otsu-cli",
    "atlaspatch-sam2",
    "atlaspatch-sam2-cli",
    "lazyslide-default",
    "lazyslide-thumbnail-level",
]


def ratio(v: float) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def fmt(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def ordered_tools(slide: dict) -> list[tuple[str, dict]]:
    tools = slide["tools"]
    keys = [k for k in TOOL_ORDER if k in tools] + [k for k in tools if k not in TOOL_ORDER]
    return [(k, tools[k]) for k in keys]


def tool_name(key: str, tool: dict) -> str:
    if key.startswith("lazyslide-"):
        return tool["label"]
    seg = key.split("-")[1]
    return f"AtlasPatch {seg}{' (CPU)' if seg == 'sam2' else ''}, " + (
        "whole process" if key.endswith("-cli") else "in-process"
    )


def lazyslide_refs(slide: dict) -> list[tuple[str, dict]]:
    return [(k, t) for k, t in ordered_tools(slide) if k.startswith("lazyslide-")]


def speedups(slide: dict, key: str) -> list[float | None]:
    """LazySlide median ÷ this tool's median, per LazySlide configuration."""
    tool = slide["tools"][key]
    if key.startswith("lazyslide-"):
        return [None for _ in lazyslide_refs(slide)]
    return [lz["total_s"]["median"] / tool["total_s"]["median"] for _, lz in lazyslide_refs(slide)]


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for s in results["slides"]:
        for key, tool in ordered_tools(s):
            tiles = tool.get("num_patches", tool.get("num_tiles"))
            rows.append(
                {
                    "slide": s["label"],
                    "file": Path(s["slide"]).name,
                    "size": f"{s['width']}×{s['height']}",
                    "mpp": s["mpp"],
                    "tissue_pct": 100 * s["reference"]["tissue_fraction"],
                    "tool": key,
                    "tool_name": tool_name(key, tool),
                    "median_s": tool["total_s"]["median"],
                    "min_s": tool["total_s"]["min"],
                    "reps": tool["reps"],
                    "tiles": tiles,
                    "speedups": speedups(s, key),
                }
            )
    return rows


def summary_table(results: dict) -> list[str]:
    configs = [t["label"].replace("LazySlide ", "") for _, t in lazyslide_refs(results["slides"][0])]
    configs = ["default", "level=L"] if len(configs) == 2 else configs
    head = "| slide | size px | mpp | tissue | tool | reps | median s | min s | tiles |" + "".join(
        f" speed-up vs LazySlide {c} |" for c in configs
    )
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|" + "---:|" * len(configs)]
    for r in summary_rows(results):
        tiles = "" if r["tiles"] is None else str(r["tiles"]) + ("†" if "sam2" in r["tool"] else "")
        ups = "".join(
            " |"
            if v is None
            else f" {'**' if v >= TARGET_SPEEDUP else ''}{ratio(v)}×{'**' if v >= TARGET_SPEEDUP else ''} |"
            for v in r["speedups"]
        )
        bold = "**" if r["tool"] in ("atlaspatch-otsu", "atlaspatch-sam2") else ""
        lines.append(
            f"| {r['slide']} | {r['size']} | {r['mpp']:g} | {r['tissue_pct']:.1f} % | {r['tool_name']} | {r['reps']} | "
            f"{bold}{fmt(r['median_s'])}{bold} | {fmt(r['min_s'])} | {tiles} |{ups}"
        )
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    slides = results["slides"]
    lines = [
        "# Segment + tile benchmark: AtlasPatch (otsu, sam2 on CPU) vs LazySlide, on a slide set",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}",
        f"Python {m['python']}; atlaspatch {m['atlaspatch']}; openslide {m['openslide']} (openslide-python "
        f"{m['openslide-python']}); numpy {m['numpy']}; opencv {m['opencv']}; h5py {m['h5py']}"
        + (
            f"; lazyslide {slides[0]['tools']['lazyslide-default']['versions']['lazyslide']}, wsidata "
            f"{slides[0]['tools']['lazyslide-default']['versions']['wsidata']} (own venv)"
            if slides and "versions" in slides[0]["tools"].get("lazyslide-default", {})
            else ""
        ),
        f"Repetitions: {results['reps']} timed after 1 untimed warm-up (sam2 whole process: "
        f"{results.get('sam2_cli_reps')}), interleaved round by round (order rotated every round), under an "
        f"exclusive flock on {LOCK_PATH} held per {results.get('lock_scope', 'run')}, so no other benchmark ran "
        f"meanwhile; seconds. Load average (1, 5, 15 min) at start {m['loadavg_start']}, at end "
        f"{m.get('loadavg_end')}.",
        "",
    ]
    if not slides:
        return "\n".join(lines)
    load = results.get("segmenter_load_s", {})
    lines += [
        "## Summary",
        "",
        *summary_table(results),
        "",
        "In-process = open → segment → tile (→ H5 for AtlasPatch; LazySlide keeps its tiles in memory), imports and "
        "model construction excluded"
        + (f" (SAM2 load, once: {load['sam2']:.1f} s)" if "sam2" in load else "")
        + ". Whole process = the `atlaspatch segment-and-get-coords` command's wall time, interpreter start and "
        "imports included; its speed-up is still against LazySlide's in-process time (LazySlide's own import, "
        + (
            f"{slides[0]['tools']['lazyslide-default']['import_s']:.1f} s, is not counted)."
            if "import_s" in slides[0]["tools"].get("lazyslide-default", {})
            else "not counted)."
        ),
        "`level=L` = LazySlide's find_tissues at the pyramid level AtlasPatch reads its thumbnail from "
        '(like-for-like); `default` = level="auto".',
        "† sam2 runs on **random-init weights** of the real SAM2.1 hiera-tiny architecture (nothing can be "
        "downloaded here): its time is real, its mask (and so its tile count) is meaningless. Coverage below is "
        "for otsu and LazySlide only.",
        "",
        "Target ≥ 2× faster than LazySlide (AtlasPatch in-process median vs LazySlide in-process median):",
        "",
    ]
    for s in slides:
        for key, _tool in ordered_tools(s):
            if key.startswith("lazyslide-") or key.endswith("-cli"):
                continue
            parts = []
            for (_, lz), up in zip(lazyslide_refs(s), speedups(s, key), strict=True):
                parts.append(f"{lz['label']} {ratio(up)}× ({'meets' if up >= TARGET_SPEEDUP else '**MISSES**'})")
            lines.append(f"- {s['label']}, {key}: " + "; ".join(parts))
    lines.append("")
    for s in slides:
        tools = s["tools"]
        lines += [
            f"## {s['label']}: {Path(s['slide']).name}",
            "",
            f"{s['width']}×{s['height']} px, mpp {s['mpp']:g} ({s['magnification']}×), levels "
            f"{s['level_downsamples']}, {s['file_mb']:.0f} MB; {100 * s['reference']['tissue_fraction']:.1f} % tissue "
            f"(reference); patch {s['patch_size']} px at {s['target_mag']}× (= {s['patch_size_level0']} level-0 px, "
            f"LazySlide mpp={s['lazyslide_mpp']:g}); {s['lattice_candidates']} lattice positions; AtlasPatch "
            f"thumbnail level {s['thumbnail_level']}.",
            "",
            "| run | median | min | max | tiles | split (medians) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for key, t in ordered_tools(s):
            total = t["total_s"]
            if key.startswith("lazyslide-"):
                split = (
                    f"open {fmt(t['open_s']['median'])}, find_tissues {fmt(t['find_tissues_s']['median'])} (level "
                    f"{t.get('segmentation_level')}, ds {t.get('segmentation_level_downsample') or 0:g}), tile_tissues "
                    f"{fmt(t['tile_tissues_s']['median'])}; {t.get('num_tissues')} tissues; peak RSS "
                    f"{t.get('max_rss_mb') or 0:.0f} MB"
                )
            elif key.endswith("-cli"):
                split = f"peak RSS {t['max_rss_mb']:.0f} MB"
                if "importtime" in t:
                    imp = t["importtime"]
                    split += (
                        f"; imports {fmt(imp['total_s'])} s (-X importtime), torch imported: "
                        f"{'**yes**' if imp['torch_imported'] else 'no'}"
                    )
            else:
                split = (
                    f"open {fmt(t['open_s']['median'])}, segment {fmt(t['segment_s']['median'])}, tile+H5 "
                    f"{fmt(t['tile_h5_s']['median'])}; thumbnail {t['thumbnail_shape'][1]}×{t['thumbnail_shape'][0]} "
                    f"(ds {t['thumbnail_downsample'][0]:.0f}); mask {100 * t['mask_fraction']:.1f} %"
                )
            tiles = t.get("num_patches", t.get("num_tiles"))
            lines.append(
                f"| {tool_name(key, t)} | **{fmt(total['median'])}** | {fmt(total['min'])} | {fmt(total['max'])} | "
                f"{tiles}{'†' if 'sam2' in key else ''} | {split} |"
            )
        lines += [
            "",
            f"Coverage vs reference (level {s['reference']['level']}, ds {s['reference']['downsample']:g}: HSV "
            f"saturation > {REFERENCE_SATURATION}; a patch has tissue if ≥ {REFERENCE_FRACTION:.0%} of its pixels "
            f"are; {s['coverage'][0]['lattice_tissue_patches'] if s['coverage'] else '?'} tissue patches on "
            "AtlasPatch's slide-global lattice):",
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
        for name in results.get("segmenters", []):
            imp = tools.get(f"atlaspatch-{name}-cli", {}).get("importtime")
            if imp:
                lines += [
                    f"{name} whole-process imports (python -X importtime, one run of "
                    f"{imp.get('run_wall_s', 0):.1f} s; top-level modules by cumulative time): "
                    + ", ".join(f"{e['module']} {e['cumulative_s']:.2f}" for e in imp["top_level"][:8])
                    + f"; heavy modules imported: {', '.join(imp['heavy_imported']) or 'none'}.",
                    "",
                ]
        if s.get("profile"):
            stages = s["profile"]["stages"]
            lines += ["otsu in-process steps, called one by one on the main thread (median of 3; seconds):", ""]
            if "error" in stages:
                lines += [f"(not available: {stages['error']})", ""]
            else:
                lines += ["| step | seconds |", "|---|---:|"]
                lines += [f"| {name} | {sec:.3f} |" for name, sec in stages.items()]
                lines.append("")
            lines += [
                "otsu in-process cProfile (one run, main thread only; profiler overhead included; "
                f"{s['profile']['prof']}):",
                "",
                "| atlaspatch function | calls | cumulative | self |",
                "|---|---:|---:|---:|",
            ]
            for r in s["profile"]["by_cumulative"][:10]:
                lines.append(f"| `{r['function']}` | {r['ncalls']} | {r['cumtime']:.3f} | {r['tottime']:.3f} |")
            lines.append("")
    lz0 = [t for _, t in lazyslide_refs(slides[0])]
    lines += [
        *[
            f"Calls timed for LazySlide `{t['config']}`: " + "; ".join(f"`{c}`" for c in t["calls"]) + "."
            for t in lz0
            if "calls" in t
        ],
        "",
        "LazySlide keeps tiles on a grid anchored per tissue polygon and drops tiles with > 30 % background "
        "(tile_tissues defaults: background_filter=True, background_fraction=0.3); `… (no bg filter)` rows are "
        "the same tissues tiled with background_filter=False (untimed). LazySlide's result stays in memory "
        "(no file written); AtlasPatch's time includes writing the H5. LazySlide's peak RSS is its server "
        "process's VmHWM over this slide's runs (both configurations run in separate server processes).",
        f"Time spent waiting for the benchmark lock: {results.get('lock_waited_s', 0):.0f} s of "
        f"{results.get('bench_seconds', 0):.0f} s.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- plots

PLOT_STYLE = {
    "atlaspatch-otsu": ("AtlasPatch otsu (in-process)", "#1b7837"),
    "atlaspatch-otsu-cli": ("AtlasPatch otsu (whole process)", "#7fbf7b"),
    "atlaspatch-sam2": ("AtlasPatch sam2 CPU (in-process)", "#2166ac"),
    "atlaspatch-sam2-cli": ("AtlasPatch sam2 CPU (whole process)", "#92c5de"),
    "lazyslide-default": ("LazySlide default", "#b2182b"),
    "lazyslide-thumbnail-level": ("LazySlide level=L (AtlasPatch's thumbnail level)", "#f4a582"),
}


def plot(results: dict, img_dir: Path) -> list[Path]:
    """Grouped bars: seconds per slide per tool (log axis), and speed-ups vs LazySlide (log axis, 2× line)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (.venv/bin/pip install matplotlib)", file=sys.stderr)
        return []
    slides = results["slides"]
    if not slides:
        return []
    img_dir.mkdir(parents=True, exist_ok=True)
    labels = [
        f"{s['label']}\n{s['width'] // 1024}k², {100 * s['reference']['tissue_fraction']:.1f} % tissue" for s in slides
    ]
    keys = [k for k in PLOT_STYLE if any(k in s["tools"] for s in slides)]
    x = np.arange(len(slides))
    written = []

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        name, colour = PLOT_STYLE[key]
        med = [s["tools"][key]["total_s"]["median"] if key in s["tools"] else np.nan for s in slides]
        lo = [s["tools"][key]["total_s"]["min"] if key in s["tools"] else np.nan for s in slides]
        hi = [s["tools"][key]["total_s"]["max"] if key in s["tools"] else np.nan for s in slides]
        err = [np.subtract(med, lo), np.subtract(hi, med)]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, med, width, label=name, color=colour, yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
        for p, v in zip(pos, med, strict=True):
            if np.isfinite(v):
                ax.text(p, v * 1.08, f"{v:.2g}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median; whiskers min–max; log scale)")
    ax.set_xticks(x, labels)
    ax.set_title(
        "Segment + tile per slide: AtlasPatch vs LazySlide (2-core CPU; sam2 on random-init weights)", fontsize=10
    )
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    lows = [s["tools"][k]["total_s"]["min"] for s in slides for k in keys if k in s["tools"]]
    ax.set_ylim(bottom=min(lows) / 2, top=ax.get_ylim()[1] * 4)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    path = img_dir / "segment_tile_seconds.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    ours = [k for k in keys if k.startswith("atlaspatch-")]
    refs = [k for k in keys if k.startswith("lazyslide-")]
    fig, axes = plt.subplots(1, len(refs), figsize=(5.5 * len(refs), 4.5), dpi=100, sharey=True, squeeze=False)
    width = 0.8 / max(1, len(ours))
    for ax, ref in zip(axes[0], refs, strict=True):
        for i, key in enumerate(ours):
            name, colour = PLOT_STYLE[key]
            vals = [
                s["tools"][ref]["total_s"]["median"] / s["tools"][key]["total_s"]["median"]
                if key in s["tools"] and ref in s["tools"]
                else np.nan
                for s in slides
            ]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, vals, width, label=name, color=colour)
            for p, v in zip(pos, vals, strict=True):
                if np.isfinite(v):
                    ax.text(p, v * 1.05, f"{ratio(v)}×", ha="center", va="bottom", fontsize=7)
        ax.axhline(TARGET_SPEEDUP, color="k", linestyle="--", linewidth=1, label="2× target")
        ax.axhline(1, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(x, [s["label"] for s in slides], fontsize=8)
        ax.set_title(f"vs {PLOT_STYLE[ref][0]}", fontsize=9)
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0][0].set_ylabel("speed-up = LazySlide median ÷ AtlasPatch median (log)")
    top = max(bar.get_height() for ax in axes[0] for bar in ax.patches if np.isfinite(bar.get_height()))
    axes[0][0].set_ylim(top=top * 2.5)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=len(names))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = img_dir / "segment_tile_speedup.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


# --------------------------------------------------------------------------------------------------- slide info


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


# --------------------------------------------------------------------------------------------------- main


@dataclass
class Task:
    """One tool on one slide: `run()` is one repetition (returns a dict with total_s)."""

    tool: str  # key in the report
    label: str
    run: Callable[[], dict]
    reps: int
    results: list[dict] = field(default_factory=list)


def run_interleaved(tasks: list[Task], reps: int, lock: BenchLock, tag: str, scope: str) -> None:
    """Round 0 is the warm-up (untimed), rounds 1..reps are timed; the order rotates every round.

    The benchmark lock is taken per run (scope "run"), per round ("round") or by the caller for the whole slide
    ("slide"): on a machine where others hold the lock for minutes, each acquisition can cost a long wait.
    """
    for rnd in range(reps + 1):
        shift = rnd % len(tasks)
        with lock.held() if scope == "round" else contextlib.nullcontext():
            for task in tasks[shift:] + tasks[:shift]:
                if rnd > task.reps:
                    continue
                with lock.held() if scope == "run" else contextlib.nullcontext():
                    result = task.run()
                if rnd:
                    task.results.append(result)
        timed = ", ".join(f"{t.tool} {t.results[-1]['total_s']:.2f}" for t in tasks if rnd and len(t.results) == rnd)
        print(f"[{tag}] round {rnd}{' (warm-up)' if not rnd else ''}: {timed}", file=sys.stderr, flush=True)


def ensure_slide_set(lock: BenchLock) -> list[tuple[str, Path]]:
    sys.path.insert(0, str(BENCH))
    import make_slide

    slides = []
    for label, name, args in SLIDE_SET:
        path = OUT / name
        if not path.exists():
            print(f"building {path} …", file=sys.stderr)
            with lock.held():
                make_slide.main([str(path), *args])
        slides.append((label, path))
    return slides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slides", nargs="*", type=Path, help="default: the slide set (built if missing)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--segmenters", default="otsu,sam2", help="comma-separated AtlasPatch segmenters")
    parser.add_argument("--sam2-cli-reps", type=int, default=3, help="repetitions of the sam2 whole-process run")
    parser.add_argument("--skip-cli", action="store_true", help="no whole-process runs")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--target-mag", type=int, default=20)
    parser.add_argument("--sam2-model-dir", type=Path, default=SAM2_WEIGHTS_DIR)
    parser.add_argument("--lazyslide-venv", type=Path, default=LAZYSLIDE_VENV)
    parser.add_argument("--setup-lazyslide", action="store_true", help="create the LazySlide venv if missing")
    parser.add_argument("--skip-lazyslide", action="store_true")
    parser.add_argument(
        "--lazyslide-configs",
        default="default,thumbnail-level",
        help='comma-separated: "default", "thumbnail-level" (find_tissues at the level AtlasPatch '
        'reads its thumbnail from) or "level=N"',
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the otsu cProfile / step split / importtime")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--img-dir", type=Path, default=IMG, help="where the PNG plots go")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--plots-only", type=Path, metavar="JSON", help="redraw the plots from a report and exit")
    parser.add_argument(
        "--lock-scope",
        choices=("run", "round", "slide"),
        default="round",
        help="hold the benchmark lock per timed run, per round of all tools, or per slide (fewest waits)",
    )
    parser.add_argument("--report-only", type=Path, metavar="JSON", help="rewrite OUT/segment_tile.md from a report")
    args = parser.parse_args(argv)

    if args.report_only:
        results = json.loads(args.report_only.read_text())
        text = markdown(results)
        (args.out / "segment_tile.md").write_text(text + "\n")
        print(text)
        return 0
    if args.plots_only:
        for path in plot(json.loads(args.plots_only.read_text()), args.img_dir):
            print(path)
        return 0
    lock = BenchLock()
    slides = [(p.stem, p) for p in args.slides] if args.slides else ensure_slide_set(lock)
    segmenters = [s for s in args.segmenters.split(",") if s]
    use_lazyslide = not args.skip_lazyslide
    if use_lazyslide:
        if args.setup_lazyslide:
            setup_lazyslide(args.lazyslide_venv)
        if not (args.lazyslide_venv / "bin" / "python").exists():
            print(f"no LazySlide venv at {args.lazyslide_venv}: pass --setup-lazyslide (or --skip-lazyslide)")
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": machine_info(),
        "reps": args.reps,
        "sam2_cli_reps": min(args.sam2_cli_reps, args.reps),
        "segmenters": segmenters,
        "lock_scope": args.lock_scope,
        "slides": [],
    }
    started = time.perf_counter()

    loaded: dict[str, object] = {}
    model_dirs: dict[str, Path | None] = {}
    setup_lock = lock.held() if args.lock_scope == "slide" else contextlib.nullcontext()
    setup_lock.__enter__()  # with --lock-scope slide: the whole setup (weights, segmenters, LazySlide) at once
    for name in segmenters:
        model_dir = None
        if name == "sam2":
            with lock.held():
                ensure_sam2_weights(args.sam2_model_dir)
            model_dir = args.sam2_model_dir
        model_dirs[name] = model_dir
        with lock.held():
            loaded[name], load_s = load_segmenter(name, model_dir)
        results.setdefault("segmenter_load_s", {})[name] = load_s
    results["sam2_weights"] = (
        str(args.sam2_model_dir / "sam2" / "model.pth") + " (random-init, written by this benchmark)"
        if "sam2" in segmenters
        else None
    )

    servers: dict[str, LazyServer] = {}
    configs = [c for c in args.lazyslide_configs.split(",") if c] if use_lazyslide else []
    for config in configs:
        with lock.held():
            servers[config] = LazyServer(args.lazyslide_venv, args.out / "lazyslide-serve.log")
    setup_lock.__exit__(None, None, None)
    try:
        for label, slide_path in slides:
            slide_lock = lock.held() if args.lock_scope == "slide" else contextlib.nullcontext()
            slide_lock.__enter__()  # with --lock-scope slide: every run, save, profile of this slide at once
            slide_path = slide_path.resolve()
            tag = slide_path.stem
            work = args.out / "work" / tag
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            info = slide_info(slide_path, args.patch_size, args.target_mag)
            lattice = info.pop("lattice")
            tasks: list[Task] = []
            for name in segmenters:
                h5_dir = work / f"inprocess-{name}"
                h5_dir.mkdir()
                seg = loaded[name]
                tasks.append(
                    Task(
                        f"atlaspatch-{name}",
                        f"AtlasPatch {name}",
                        lambda h5_dir=h5_dir, seg=seg, slide_path=slide_path: atlaspatch_once(
                            slide_path, h5_dir, args.patch_size, args.target_mag, seg
                        ),
                        args.reps,
                    )
                )
                if not args.skip_cli:
                    cmd = atlaspatch_cli(Path(sys.executable)) + cli_args(
                        slide_path, work / f"cli-{name}", args.patch_size, args.target_mag, name, model_dirs[name]
                    )
                    tasks.append(
                        Task(
                            f"atlaspatch-{name}-cli",
                            f"AtlasPatch {name}, whole process",
                            lambda cmd=cmd: cli_once(cmd),
                            results["sam2_cli_reps"] if name == "sam2" else args.reps,
                        )
                    )
            lz_configs: dict[str, str] = {}
            for config, server in servers.items():
                actual = f"level={info['thumbnail_level']}" if config == "thumbnail-level" else config
                lz_configs[config] = actual
                server.reset_peak_rss()
                tasks.append(
                    Task(
                        f"lazyslide-{config}",
                        f"LazySlide `{actual}`",
                        lambda server=server, actual=actual, slide_path=slide_path, info=info: server.ask(
                            op="rep",
                            slide=str(slide_path),
                            config=actual,
                            tile_px=args.patch_size,
                            mpp=info["lazyslide_mpp"],
                        ),
                        args.reps,
                    )
                )
            print(f"[{tag}] {len(tasks)} runs × {args.reps} reps, interleaved …", file=sys.stderr, flush=True)
            run_interleaved(tasks, args.reps, lock, tag, args.lock_scope)

            tools: dict[str, dict] = {}
            for task in tasks:
                runs = task.results
                entry = {"label": task.label, "reps": len(runs)}
                for key in ("total_s", "open_s", "segment_s", "tile_h5_s", "find_tissues_s", "tile_tissues_s"):
                    if key in runs[0]:
                        entry[key] = summarize([r[key] for r in runs])
                entry.update({k: v for k, v in runs[-1].items() if not k.endswith("_s") and k != "h5"})
                if "max_rss_mb" in runs[0]:
                    entry["max_rss_mb"] = max(r["max_rss_mb"] for r in runs)
                tools[task.tool] = entry
            for name in segmenters:
                if f"atlaspatch-{name}-cli" in tools:
                    tools[f"atlaspatch-{name}-cli"]["num_patches"] = cli_num_patches(work / f"cli-{name}")
            print(f"[{tag}] coverage …", file=sys.stderr, flush=True)
            ref = Reference(slide_path)
            size0 = info["patch_size_level0"]
            cov = []
            if "otsu" in segmenters:
                with h5py.File(work / "inprocess-otsu" / f"{slide_path.stem}.h5", "r") as handle:
                    ours = handle["coords"][:, :2].astype(np.int64)
                cov.append(coverage(ref, lattice, size0, "AtlasPatch (otsu)", ours, info["mpp"], work / "cov-otsu.png"))
            for config, server in servers.items():
                lz = tools[f"lazyslide-{config}"]
                lz["max_rss_mb"] = server.peak_rss_mb()
                prefix = work / f"lazyslide-{config}"
                with lock.held():  # untimed, but it is CPU work: keep it off others' timed runs
                    lz.update(
                        server.ask(
                            op="save",
                            slide=str(slide_path),
                            config=lz_configs[config],
                            tile_px=args.patch_size,
                            mpp=info["lazyslide_mpp"],
                            out_prefix=str(prefix),
                        )
                    )
                lz["import_s"] = server.import_s
                lz_size0 = lz["tile_size_level0"] or size0
                name = f"LazySlide `{lz_configs[config]}`"
                cov.append(
                    coverage(
                        ref,
                        lattice,
                        lz_size0,
                        name,
                        np.load(f"{prefix}.tiles.npy"),
                        info["mpp"],
                        work / f"cov-{config}.png",
                    )
                )
                cov.append(
                    coverage(
                        ref,
                        lattice,
                        lz_size0,
                        f"{name} (no bg filter)",
                        np.load(f"{prefix}.tiles-nofilter.npy"),
                        info["mpp"],
                    )
                )
            entry = {
                **info,
                "label": label,
                "tools": tools,
                "reference": {
                    "level": ref.level,
                    "downsample": ref.downsample,
                    "tissue_fraction": float(ref.mask.mean()),
                },
                "coverage": cov,
            }
            if not args.no_profile and "otsu" in segmenters:
                with lock.held():
                    entry["profile"] = profile_inprocess(slide_path, work, args.patch_size, args.target_mag)
            for name in segmenters if not args.no_profile and not args.skip_cli else []:
                if name != "otsu" and results["slides"]:
                    continue  # the heavy segmenters' imports: on the first slide only
                cmd = [
                    sys.executable,
                    "-X",
                    "importtime",
                    "-m",
                    "atlaspatch",
                    *cli_args(
                        slide_path,
                        work / f"cli-importtime-{name}",
                        args.patch_size,
                        args.target_mag,
                        name,
                        model_dirs[name],
                    ),
                ]
                with lock.held():
                    imp = run_child(cmd, env=cli_env())
                tools[f"atlaspatch-{name}-cli"]["importtime"] = parse_importtime(imp["stderr"])
                tools[f"atlaspatch-{name}-cli"]["importtime"]["run_wall_s"] = imp["wall_s"]
            slide_lock.__exit__(None, None, None)
            results["slides"].append(entry)
            # a partial report after every slide, so that an interrupted run still leaves something
            write_report(results, args.out, started)
    finally:
        for server in servers.values():
            server.close()
    results["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    results["lock_waited_s"] = lock.waited_s
    text = write_report(results, args.out, started)
    print(text)
    if not args.no_plots:
        for path in plot(results, args.img_dir):
            print(f"wrote {path}", file=sys.stderr)
    print(
        f"(benchmark took {results['bench_seconds']:.0f} s, {lock.waited_s:.0f} s of it waiting for the lock)",
        file=sys.stderr,
    )
    return 0


def write_report(results: dict, out: Path, started: float) -> str:
    results["bench_seconds"] = time.perf_counter() - started
    text = markdown(results)
    (out / "segment_tile.md").write_text(text + "\n")
    (out / "segment_tile.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
