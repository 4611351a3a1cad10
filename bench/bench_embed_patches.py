#!/usr/bin/env python
"""Embed-patches benchmark: the stage's throughput vs the bare model forward and vs a serial reader; peak memory.

    .venv/bin/python bench/bench_embed_patches.py                 # builds/reuses bench/out/mosaic-32768-mpp0.5.tiff
    .venv/bin/python bench/bench_embed_patches.py --models my_resnet18 --patches 512 --skip-variants --skip-memory

On the 20× mosaic slide of make_slide.py, tiled with `atlaspatch segment-and-get-coords … --patch-size 224
--target-mag 20 --segmenter otsu`, per model and for the same first N patches at the same batch size (N: about
--seconds of bare forward, at least 3 batches), --reps times, interleaved:

(1) bare forward: the N patches read, resized and cropped beforehand (to_uint8_batch, per batch, as the stage's
    workers hand them over), then only LoadedPatchEncoder.embed (normalise + forward) timed, batch after batch:
    the ceiling the stage can reach;
(2) the stage in-process: embed_patches(…) (what run_embed_patches_stage and the CLI call) on a copy of the tiled
    H5 whose coords are cut to N rows: one DataLoader with W forkserver workers, for each W of --workers. The
    encoder is the one (1) used (loaded and warm); this process's fork server is started by an untimed run first;
(3) serial reader, the AtlasPatch way: read_region one patch at a time on the main thread, preprocess, one
    forward per batch, nothing overlapped;
(4) stage variants (--variant-model): embed_patches monkeypatched (StagePatch): as shipped with 1, 2, 4 workers;
    with workers handing over normalised float32 batches (the stage before uint8 batches); without the workers'
    fixed glibc mmap threshold (the stage before commit 6868c46);
(5) peak memory vs patch count: `atlaspatch embed-patches` as a fresh subprocess per count on an H5 tiled with
    --step-size 112 (≈ 18k overlapping patches of the same slide) cut to 1k, 4k, 16k rows, with a cheap encoder
    (default: `bench_tiny`, registered by this very file as a --feature-plugin: 4×4 average pool + linear, so the
    run is bound by reading, not by the model), as shipped (`baseline`) and without the workers' fixed mmap
    threshold (`glibc-default`: this file run as `--as-cli glibc-default embed-patches …`). The process tree (CLI,
    fork server, DataLoader workers) is polled from /proc every 0.1 s for the sums of RSS and PSS, and each
    process's VmHWM.

Weights cannot be downloaded here, so the benchmark writes *random-init* weights of each encoder's real
architecture into bench/out/embed/random-weights/<name>/<file> (safetensors or torch.save, as the registry's file
name says) and passes that as --model-dir: right for throughput, meaningless as features (never use them as a
model).

Writes bench/out/embed_patches.md and .json and prints the Markdown. Targets (reported, not asserted): the stage
reaches ≥ 0.9 of the bare forward's patches/s on CPU, and peak memory stays flat as the patch count grows.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
DEFAULT_SLIDE = OUT / "mosaic-32768-mpp0.5.tiff"
RESNET18_PLUGIN = REPO / "examples" / "feature_plugins" / "my_resnet18.py"
TINY = "bench_tiny"
TARGET_RATIO = 0.9
TARGET_VS_LAZYSLIDE = 1.5
LOCK_PATH = Path("/tmp/atlaspatch-bench.lock")
LAZYSLIDE_PYTHON = OUT / "venv-lazyslide" / "bin" / "python"
LAZYSLIDE_RUNNER = BENCH / "lazyslide_features.py"
LAZYSLIDE_MODELS = ("resnet50", "lunit_vit_small_patch8_dino", TINY)  # rebuilt in lazyslide_features.py
PATCH_SIZE = 224
TARGET_MAG = 20


# --------------------------------------------------------------------------------------------------- plugin


def _tiny_architecture():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(1), nn.Linear(48, 64))


def register_patch_encoders(registry: Any) -> None:
    """--feature-plugin entry point: `bench_tiny`, an almost free encoder for the memory sweep (no weights file)."""
    from atlaspatch.encoders.patch import PatchEncoderSpec, Preprocess

    registry.register(
        PatchEncoderSpec(
            name=TINY,
            dim=64,
            preprocess=Preprocess(input_size=224),
            weights=None,
            architecture=_tiny_architecture,
            description="benchmark stand-in: 4x4 average pool + linear (bench/bench_embed_patches.py)",
            family="bench",
        )
    )


# --------------------------------------------------------------------------------------------------- variants

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


def fixed_mmap_threshold(threshold: int = 4 << 20) -> None:
    """glibc: allocations ≥ `threshold` always get their own mmap (returned to the OS on free). Setting it also
    switches off glibc's dynamic threshold, which otherwise rises to the largest block freed so far (up to 32 MiB),
    after which every 19 MB batch tensor is carved from the heap instead. (What the stage's workers do since
    commit 6868c46; this variant is for checkouts before it.)"""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def worker_init_mmap_threshold(stage_pid: int, worker_id: int) -> None:
    """The stage's worker_init_fn plus fixed_mmap_threshold().

    Runs in the worker, where atlaspatch.stages.embed_patches is the unpatched module (preloaded by the fork server).
    """
    from atlaspatch.stages.embed_patches import _init_worker

    _init_worker(stage_pid, worker_id)
    fixed_mmap_threshold()


def worker_init_glibc_default(stage_pid: int, worker_id: int) -> None:
    """The stage's worker_init_fn without its mallopt (glibc's dynamic mmap threshold: the stage before 6868c46)."""
    from atlaspatch.stages import embed_patches as stage

    if hasattr(stage, "_fixed_mmap_threshold"):
        stage._fixed_mmap_threshold = lambda *args, **kwargs: None  # this worker's copy of the module only
    stage._init_worker(stage_pid, worker_id)


WORKER_INITS = {"mmap-threshold": worker_init_mmap_threshold, "glibc-default": worker_init_glibc_default}
CLI_VARIANTS = ("baseline", *WORKER_INITS)


def run_cli_variant(variant: str, cli_args: list[str]) -> int:
    """`bench_embed_patches.py --as-cli VARIANT embed-patches …`: the atlaspatch CLI with a monkeypatched stage."""
    from atlaspatch import cli
    from atlaspatch.stages import embed_patches

    if variant in WORKER_INITS:
        embed_patches._init_worker = WORKER_INITS[variant]  # patch_loader looks the name up at call time
    elif variant != "baseline":
        raise SystemExit(f"unknown variant {variant!r}")
    sys.argv = ["atlaspatch", *cli_args]
    cli.main()
    return 0


class Float32Batches:
    """Variant dataset: the stage before workers handed over uint8 — each batch normalised to float32 NCHW in the
    worker (4× the bytes through shared memory, and to the device)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Any:
        from atlaspatch.encoders.patch.transforms import normalize_batch

        return normalize_batch(self.inner[index], self.inner.preprocess).contiguous()

    def close(self) -> None:
        self.inner.close()


class StagePatch:
    """Monkeypatches atlaspatch.stages.embed_patches for one in-process run (restored on exit).

    `mmap-threshold` / `glibc-default`: the workers' init with / without a fixed glibc mmap threshold (see
    WORKER_INITS); `float32`: workers hand over normalised float32 batches (Float32Batches), as the stage did
    before it handed over uint8."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> StagePatch:
        from atlaspatch.stages import embed_patches as stage

        self.saved = {"_init_worker": stage._init_worker, "patch_loader": stage.patch_loader}
        loader = stage.patch_loader
        for name, init in WORKER_INITS.items():
            if name in self.variant:
                stage._init_worker = init
        if "float32" in self.variant:

            def float32_loader(dataset: Any, num_workers: int, pin_memory: bool) -> Any:
                return loader(Float32Batches(dataset), num_workers, pin_memory)

            stage.patch_loader = float32_loader
        return self

    def __exit__(self, *exc: object) -> None:
        from atlaspatch.stages import embed_patches as stage

        for name, value in self.saved.items():
            setattr(stage, name, value)


# --------------------------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def bench_lock():
    """The machine-wide benchmark lock (/tmp/atlaspatch-bench.lock, what `flock` takes): held around every timed
    rep so that no two benchmarks on this shared 2-core machine ever overlap."""
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------- LazySlide


class LazySlideServer:
    """bench/lazyslide_features.py --serve in LazySlide's venv: one long-lived process per model (model built and
    warm once), answering one JSON line per request, so its runs interleave with AtlasPatch's rep by rep."""

    def __init__(self, python: Path) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(LAZYSLIDE_RUNNER), "--serve"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(OUT / "lazyslide_features.stderr", "a"),  # noqa: SIM115 - lives as long as the process
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def ask(self, **request: Any) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"LazySlide runner died; see {OUT / 'lazyslide_features.stderr'}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"LazySlide runner: {reply['error']} (see {OUT / 'lazyslide_features.stderr'})")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(cmd="quit")
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------------------- helpers


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_info(device: str) -> dict:
    import h5py
    import numpy as np
    import openslide
    import timm
    import torch

    import atlaspatch

    cpu, mem_gib = "unknown", None
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        mem_gib = next(
            round(int(line.split()[1]) / 1024**2, 1)
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "atlaspatch": atlaspatch.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "openslide": openslide.__library_version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "device": device,
        "loadavg_start": loadavg(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def run_cli(args: list[str], timeout: float = 1200) -> str:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "atlaspatch", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"atlaspatch {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def tile(slide: Path, out_dir: Path, step_size: int | None = None) -> Path:
    """The tiled H5 of the slide (reused when it exists)."""
    h5 = out_dir / "patches" / f"{slide.stem}.h5"
    if not h5.exists():
        step = ["--step-size", str(step_size)] if step_size else []
        run_cli(
            [
                "segment-and-get-coords",
                str(slide),
                "-o",
                str(out_dir),
                "--patch-size",
                str(PATCH_SIZE),
                "--target-mag",
                str(TARGET_MAG),
                "--segmenter",
                "otsu",
                "--device",
                "cpu",
                *step,
            ]
        )
    return h5


def cut_h5(source: Path, target: Path, rows: int) -> Path:
    """A copy of a tiled H5 keeping its first `rows` patches (coords, passports, num_patches)."""
    import h5py

    if target.exists():
        with h5py.File(target, "r") as handle:
            if int(handle.attrs["num_patches"]) == rows:
                return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    with h5py.File(source, "r") as src, h5py.File(tmp, "w") as dst:
        total = int(src.attrs["num_patches"])
        if rows > total:
            raise ValueError(f"{source} has {total} patches, fewer than {rows}")
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            if name in ("coords", "passports"):
                data = dst.create_dataset(name, data=src[name][:rows])
                for key, value in src[name].attrs.items():
                    data.attrs[key] = value
            elif name != "features":
                src.copy(src[name], dst, name=name)
        dst.attrs["num_patches"] = rows
    tmp.replace(target)
    return target


def random_weights(spec: Any, model_dir: Path) -> str:
    """Random-init weights of the spec's real architecture where --model-dir looks for its file. bench_tiny needs
    none (its seeded init is its weights); they are saved for LazySlide's copy of it."""
    if spec.weights is None and spec.name == TINY:
        path = model_dir / TINY / "state_dict.pth"
        if not path.exists():
            import torch

            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(spec.architecture().state_dict(), path)
        return str(path)
    if spec.weights is None:
        return "none needed"
    path = model_dir / spec.weights.name / spec.weights.filename
    if path.exists():
        return str(path)
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {key: value.detach().contiguous() for key, value in spec.architecture().state_dict().items()}
    tmp = path.with_name(f".{path.name}.partial")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"note": "random init written by bench/bench_embed_patches.py"})
    else:
        torch.save(state, tmp)
    tmp.replace(path)
    (path.parent / "README.txt").write_text(
        f"{path.name}: RANDOM-INIT weights of the {spec.name} architecture, written by bench/bench_embed_patches.py "
        "for throughput measurements. Not a model: never use these features.\n"
    )
    return str(path)


# --------------------------------------------------------------------------------------------------- throughput


def read_batches(slide_path: Path, coords: Any, preprocess: Any, batch_size: int) -> list:
    """uint8 batches, as the stage's workers hand them over (embed normalises them)."""
    from atlaspatch.encoders.patch.transforms import to_uint8_batch
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.stages.tile import read_patch

    with open_slide(slide_path) as slide:
        return [
            to_uint8_batch([read_patch(slide, row, PATCH_SIZE) for row in coords[i : i + batch_size]], preprocess)
            for i in range(0, len(coords), batch_size)
        ]


def bare_forward(encoder: Any, batches: list) -> dict:
    """Only the model: LoadedPatchEncoder.embed over tensors prepared beforehand."""
    started = time.perf_counter()
    count = 0
    for images in batches:
        count += len(encoder.embed(images))
    sync(encoder.device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "patches": count, "patches_per_s": count / seconds}


def serial_reader(encoder: Any, slide_path: Path, coords: Any, batch_size: int) -> dict:
    """AtlasPatch's way: read_region one patch at a time on the main thread, then one forward per batch."""
    from atlaspatch.encoders.patch.transforms import to_uint8_batch
    from atlaspatch.slides.reader import open_slide
    from atlaspatch.stages.tile import read_patch

    read_s = 0.0
    started = time.perf_counter()
    count = 0
    with open_slide(slide_path) as slide:
        for i in range(0, len(coords), batch_size):
            t = time.perf_counter()
            images = to_uint8_batch(
                [read_patch(slide, row, PATCH_SIZE) for row in coords[i : i + batch_size]], encoder.spec.preprocess
            )
            read_s += time.perf_counter() - t
            count += len(encoder.embed(images))
    sync(encoder.device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "patches": count, "patches_per_s": count / seconds, "read_preprocess_s": read_s}


class TimedEncoder:
    """The loaded encoder, with the time of every embed call: when each batch reached the model and left it."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.calls: list[tuple[float, float]] = []

    def __getattr__(self, name: str) -> Any:  # spec, device, precision, weights_…: the encoder's
        return getattr(self.encoder, name)

    def embed(self, images: Any) -> Any:
        started = time.perf_counter()
        features = self.encoder.embed(images)
        self.calls.append((started, time.perf_counter()))
        return features


def stage_inprocess(
    encoder: Any, slide_path: Path, h5_in: Path, work: Path, batch_size: int, workers: int, variant: str = ""
) -> dict:
    """embed_patches(…) as run_embed_patches_stage calls it, with the loaded encoder; every batch timed."""
    from atlaspatch.stages.embed_patches import EmbedOptions, embed_patches

    h5_out = work / f"stage-w{workers}.h5"
    h5_out.unlink(missing_ok=True)
    timed = TimedEncoder(encoder)
    with StagePatch(variant):
        started = time.perf_counter()
        rows = embed_patches(
            slide_path, h5_in, h5_out, [encoder.spec], lambda spec: timed, EmbedOptions(batch_size, workers)
        )[encoder.spec.name]
        seconds = time.perf_counter() - started
    h5_out.unlink(missing_ok=True)
    calls = timed.calls
    model_s = sum(end - start for start, end in calls)
    waits = [calls[i + 1][0] - calls[i][1] for i in range(len(calls) - 1)]
    return {
        "workers": workers,
        "seconds": seconds,
        "patches": rows,
        "patches_per_s": rows / seconds,
        "first_batch_s": calls[0][0] - started,  # call → first batch at the model (start-up, first read)
        "model_s": model_s,  # forward time inside the stage (bare forward time, plus any slow-down)
        "wait_s": sum(waits),  # the model idle between batches, waiting for the loader
        "after_last_s": started + seconds - calls[-1][1],  # rename + attrs + atomic replace
        # from the first batch leaving the model to the last: start-up and the first forward excluded
        "steady_patches_per_s": (rows - min(batch_size, rows)) / (calls[-1][1] - calls[0][1]) if len(waits) else None,
    }


def auto_patches(encoder: Any, slide_path: Path, coords: Any, batch_size: int, seconds: float, cap: int) -> int:
    """Enough whole batches for each run to take about `seconds` (at least 3 batches, at most `cap` patches)."""
    warm = read_batches(slide_path, coords[:batch_size], encoder.spec.preprocess, batch_size)[0]
    encoder.embed(warm)  # the first call at this batch shape sets up oneDNN/cuDNN kernels: not representative
    rate = bare_forward(encoder, [warm])["patches_per_s"]
    batches = max(3, round(seconds * rate / batch_size))
    return min(batches * batch_size, cap - cap % batch_size or cap)


def start_forkserver(registry: Any, slide_path: Path, tiled_h5: Path, work: Path, args: argparse.Namespace) -> float:
    """Untimed: one embed_patches run with the free encoder starts this process's fork server (a CLI run starts
    its own, once per slide: that cost is in the memory sweep's wall times, not in the throughput runs)."""
    from atlaspatch.encoders.patch.loading import load_patch_encoder
    from atlaspatch.stages.embed_patches import EmbedOptions, embed_patches

    encoder = load_patch_encoder(registry.get(TINY), args.device, "float32", None)
    h5 = cut_h5(tiled_h5, work / "h5" / f"first{2 * args.batch_size}.h5", 2 * args.batch_size)
    started = time.perf_counter()
    embed_patches(
        slide_path,
        h5,
        work / "warmup.h5",
        [encoder.spec],
        lambda spec: encoder,
        EmbedOptions(args.batch_size, max(args.workers)),
    )
    (work / "warmup.h5").unlink(missing_ok=True)
    return time.perf_counter() - started


def bench_model(
    name: str,
    registry: Any,
    slide_path: Path,
    tiled_h5: Path,
    work: Path,
    model_dir: Path,
    args: argparse.Namespace,
) -> dict:
    import h5py

    from atlaspatch.encoders.patch.loading import load_patch_encoder

    spec = registry.get(name)
    weights = random_weights(spec, model_dir)
    t = time.perf_counter()
    encoder = load_patch_encoder(spec, args.device, args.precision, model_dir)
    load_s = time.perf_counter() - t
    with h5py.File(tiled_h5, "r") as handle:
        all_coords = handle["coords"][...]
    b = args.batch_size
    n = (
        args.model_patches.get(name)
        or args.patches
        or auto_patches(encoder, slide_path, all_coords, b, args.seconds, min(args.max_patches, len(all_coords)))
    )
    n = min(n, len(all_coords))
    coords = all_coords[:n]
    h5_in = cut_h5(tiled_h5, work / "h5" / f"first{n}.h5", n)
    print(f"[{name}] {n} patches, batch {b}; loading them for the bare forward …", file=sys.stderr)
    t = time.perf_counter()
    batches = read_batches(slide_path, coords, spec.preprocess, b)
    preload_s = time.perf_counter() - t
    if args.device.startswith("cuda"):
        batches = [x.pin_memory() for x in batches]
    first = encoder.embed(batches[0])  # warm-up at the batch shape every run uses
    lazyslide = None
    ls_info: dict = {}
    ls_workers = args.lazyslide_workers if not args.skip_lazyslide and name in LAZYSLIDE_MODELS else []
    if ls_workers:
        print(f"[{name}] starting LazySlide ({args.lazyslide_python}) …", file=sys.stderr)
        lazyslide = LazySlideServer(args.lazyslide_python)
        with bench_lock():  # its warm-up batch
            ls_info = lazyslide.ask(
                cmd="setup",
                slide=str(slide_path),
                coords=coords.tolist(),
                model=name,
                weights=weights,
                batch_size=b,
                precision=args.precision,
            )
    runs: dict[str, list[dict]] = {
        "bare": [],
        "serial": [],
        **{f"stage_w{w}": [] for w in args.workers},
        **{f"lazyslide_w{w}": [] for w in ls_workers},
    }
    for rep in range(args.reps):
        print(f"[{name}] rep {rep + 1}/{args.reps}: bare forward …", file=sys.stderr)
        with bench_lock():
            runs["bare"].append(bare_forward(encoder, batches))
        for w in args.workers:
            print(f"[{name}] rep {rep + 1}/{args.reps}: embed_patches, {w} worker(s) …", file=sys.stderr)
            with bench_lock():
                runs[f"stage_w{w}"].append(stage_inprocess(encoder, slide_path, h5_in, work, b, w))
        for w in ls_workers:
            print(f"[{name}] rep {rep + 1}/{args.reps}: LazySlide feature_extraction, {w} worker(s) …", file=sys.stderr)
            with bench_lock():
                result = lazyslide.ask(cmd="run", n=n, workers=w)  # type: ignore[union-attr]
            result.pop("first", None)
            runs[f"lazyslide_w{w}"].append(result)
        if not args.skip_serial:
            print(f"[{name}] rep {rep + 1}/{args.reps}: serial reader …", file=sys.stderr)
            with bench_lock():
                runs["serial"].append(serial_reader(encoder, slide_path, coords, b))
    if lazyslide is not None:
        # same pixels, same weights, same architecture: the features must agree (the transforms differ only in
        # where they resize: AtlasPatch PIL on uint8, LazySlide torchvision on float32)
        check = lazyslide.ask(cmd="run", n=b, workers=0)
        ls_first = check.pop("first")
        diff = (first[: len(ls_first)] - __import__("torch").tensor(ls_first)).abs()
        ls_info["feature_check"] = {
            "patches": len(ls_first),
            "max_abs_diff": float(diff.max()),
            "max_abs_feature": float(first.abs().max()),
            "mean_abs_diff": float(diff.mean()),
        }
        lazyslide.close()
    del batches
    result = {
        "model": name,
        "family": spec.family,
        "dim": spec.dim,
        "preprocess": spec.preprocess.describe(),
        "weights": f"random init ({weights})",
        "precision": encoder.precision,
        "device": encoder.device,
        "load_s": load_s,
        "preload_s": preload_s,
        "patches": n,
        "batch_size": b,
        "reps": args.reps,
        "runs": runs,
        "lazyslide": ls_info,
        "loadavg": loadavg(),
    }
    result["summary"] = summarize_model(result)
    return result


STAGE_VARIANTS = (  # (label, workers, StagePatch variant)
    ("as shipped", 1, ""),
    ("as shipped", 2, ""),
    ("as shipped (CLI default workers)", 4, ""),
    ("float32 hand-over (the stage before uint8 batches)", 1, "float32"),
    ("float32 hand-over (the stage before uint8 batches)", 2, "float32"),
    ("glibc default malloc (the stage before 6868c46)", 2, "glibc-default"),
)


def bench_variants(
    name: str, registry: Any, slide_path: Path, tiled_h5: Path, work: Path, model_dir: Path, args: argparse.Namespace
) -> dict:
    """The stage monkeypatched (StagePatch) vs as shipped, interleaved rep by rep, against one bare forward."""
    import h5py

    from atlaspatch.encoders.patch.loading import load_patch_encoder

    spec = registry.get(name)
    random_weights(spec, model_dir)
    encoder = load_patch_encoder(spec, args.device, args.precision, model_dir)
    with h5py.File(tiled_h5, "r") as handle:
        all_coords = handle["coords"][...]
    b = args.batch_size
    cap = min(args.max_patches, len(all_coords))
    n = args.patches or auto_patches(encoder, slide_path, all_coords, b, args.variant_seconds, cap)
    h5_in = cut_h5(tiled_h5, work / "h5" / f"first{n}.h5", n)
    batches = read_batches(slide_path, all_coords[:n], spec.preprocess, b)
    encoder.embed(batches[0])
    bare: list[dict] = []
    runs: dict[int, list[dict]] = {i: [] for i in range(len(STAGE_VARIANTS))}
    for rep in range(args.variant_reps):
        print(f"[variants {name}] rep {rep + 1}/{args.variant_reps}: bare forward …", file=sys.stderr)
        with bench_lock():
            bare.append(bare_forward(encoder, batches))
        for i, (label, workers, variant) in enumerate(STAGE_VARIANTS):
            print(
                f"[variants {name}] rep {rep + 1}/{args.variant_reps}: {label}, {workers} worker(s) …", file=sys.stderr
            )
            with bench_lock():
                runs[i].append(stage_inprocess(encoder, slide_path, h5_in, work, b, workers, variant))
    del batches
    bare_rate = statistics.median(r["patches_per_s"] for r in bare)
    bare_s = statistics.median(r["seconds"] for r in bare)
    rows = []
    for i, (label, workers, variant) in enumerate(STAGE_VARIANTS):
        values = runs[i]
        rate = statistics.median(r["patches_per_s"] for r in values)
        rows.append(
            {
                "variant": label,
                "patch": variant,
                "workers": workers,
                "patches_per_s": rate,
                "ratio": rate / bare_rate,
                "forward_slowdown": statistics.median(r["model_s"] for r in values) / bare_s,
                "wait_s": statistics.median(r["wait_s"] for r in values),
                "first_batch_s": statistics.median(r["first_batch_s"] for r in values),
                "runs": values,
            }
        )
    return {
        "model": name,
        "patches": n,
        "reps": args.variant_reps,
        "bare": bare,
        "bare_patches_per_s": bare_rate,
        "rows": rows,
    }


def summarize_model(result: dict) -> dict:
    runs = result["runs"]
    bare = statistics.median(r["patches_per_s"] for r in runs["bare"])
    bare_s = statistics.median(r["seconds"] for r in runs["bare"])
    out = {"bare": {"patches_per_s": bare}}
    for key, values in runs.items():
        if key == "bare" or not values:
            continue
        rate = statistics.median(r["patches_per_s"] for r in values)
        entry = {"patches_per_s": rate, "ratio": rate / bare}
        steady = [r["steady_patches_per_s"] for r in values if r.get("steady_patches_per_s")]
        if steady:
            entry["steady_patches_per_s"] = statistics.median(steady)
            entry["steady_ratio"] = entry["steady_patches_per_s"] / bare
        if "first_batch_s" in values[0]:
            for field in ("first_batch_s", "wait_s", "after_last_s"):
                entry[field] = statistics.median(r[field] for r in values)
            # the forward inside the stage vs the same forward alone: > 1 = the loader's processes slow it down
            entry["forward_slowdown"] = statistics.median(r["model_s"] for r in values) / bare_s
        out[key] = entry
    stage = [v["patches_per_s"] for k, v in out.items() if k.startswith("stage_")]
    ls = [v["patches_per_s"] for k, v in out.items() if k.startswith("lazyslide_")]
    if stage and ls:
        out["vs_lazyslide"] = max(stage) / max(ls)
    return out


# --------------------------------------------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rfind(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _proc_kb(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, VmHWM) of one process in kB; zeros if it is gone."""
    rss = pss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except (OSError, ValueError):
        pass
    return rss, pss, hwm


class TreeMemory(threading.Thread):
    """Polls the process tree under `root` from /proc: peak sums of RSS and PSS, per role and in all.

    Roles: `cli` (the command), `forkserver` (multiprocessing's fork server, a child of it), `worker` (the
    DataLoader workers the fork server forks), `other` (resource tracker, …).
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.started = time.perf_counter()
        self.roles: dict[int, str] = {root: "cli"}
        self.peak = {"rss_kb": 0, "pss_kb": 0}
        self.role_peak_pss_kb: dict[str, int] = {}
        self.hwm_kb: dict[int, int] = {}
        self.timeline: list[tuple[float, int, int]] = []  # (s, RSS kB, PSS kB)
        self.max_procs = 0

    def _role(self, pid: int, parent: int) -> str:
        if pid not in self.roles:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmdline = ""
            if self.roles.get(parent) == "forkserver":
                self.roles[pid] = "worker"
            elif "multiprocessing.forkserver" in cmdline:
                self.roles[pid] = "forkserver"
            else:
                self.roles[pid] = "other"
        return self.roles[pid]

    def sample(self) -> None:
        tree = _children_map()
        found, todo = [], [(self.root, 0)]
        while todo:
            pid, parent = todo.pop()
            found.append((pid, self._role(pid, parent)))
            todo.extend((child, pid) for child in tree.get(pid, ()))
        rss = pss = 0
        by_role: dict[str, int] = {}
        for pid, role in found:
            r, p, h = _proc_kb(pid)
            rss, pss = rss + r, pss + p
            by_role[role] = by_role.get(role, 0) + p
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), h)
        for role, kb in by_role.items():
            self.role_peak_pss_kb[role] = max(self.role_peak_pss_kb.get(role, 0), kb)
        self.peak["rss_kb"], self.peak["pss_kb"] = max(self.peak["rss_kb"], rss), max(self.peak["pss_kb"], pss)
        self.max_procs = max(self.max_procs, len(found))
        self.timeline.append((round(time.perf_counter() - self.started, 2), rss, pss))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def report(self) -> dict:
        workers = [kb for pid, kb in self.hwm_kb.items() if self.roles.get(pid) == "worker"]
        return {
            "tree_peak_rss_mb": self.peak["rss_kb"] / 1024,
            "tree_peak_pss_mb": self.peak["pss_kb"] / 1024,
            "peak_pss_mb_by_role": {role: kb / 1024 for role, kb in self.role_peak_pss_kb.items()},
            "cli_hwm_mb": self.hwm_kb.get(self.root, 0) / 1024,
            "worker_hwm_mb": max(workers, default=0) / 1024,
            "workers_seen": len(workers),
            "max_processes": self.max_procs,
            "samples": len(self.timeline),
            "timeline": self.timeline[:: max(1, len(self.timeline) // 200)],
        }


def cli_memory(cmd: list[str], timeout: float = 1200) -> dict:
    """Run a command: wall time, its process tree's memory (TreeMemory), and wait4's ru_maxrss (the largest
    peak RSS of the command and the descendants it reaped)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        poller = TreeMemory(proc.pid)
        poller.start()
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
        poller.stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return {"wall_s": wall, "wait4_max_rss_mb": usage.ru_maxrss / 1024, **poller.report()}


def memory_sweep(
    slide_path: Path, work: Path, model: str, model_dir: Path, counts: list[int], args: argparse.Namespace
) -> dict:
    dense = tile(slide_path, work / "tiled-step112", step_size=112)
    import h5py

    with h5py.File(dense, "r") as handle:
        available = int(handle.attrs["num_patches"])
    plugins = ["--feature-plugin", str(Path(__file__).resolve())]
    if not model.startswith(TINY):
        plugins += ["--feature-plugin", str(RESNET18_PLUGIN)]
    workers = max(args.workers)
    rows = []
    for variant in args.memory_variants:
        for count in counts:
            if count > available:
                print(f"[memory] {count} > {available} patches in {dense}: skipped", file=sys.stderr)
                continue
            h5 = cut_h5(dense, work / "h5" / f"step112-first{count}.h5", count)
            out_dir = work / "cli-out"
            if variant == "baseline":
                head = [sys.executable, "-m", "atlaspatch"]
            else:
                head = [sys.executable, str(Path(__file__).resolve()), "--as-cli", variant]
            cmd = [
                *head,
                "embed-patches",
                "--slide",
                str(slide_path),
                "--h5",
                str(h5),
                "-o",
                str(out_dir),
                "--encoders",
                model,
                *plugins,
                "--feature-device",
                args.device,
                "--feature-precision",
                args.precision,
                "--feature-batch-size",
                str(args.batch_size),
                "--feature-num-workers",
                str(workers),
                "--model-dir",
                str(model_dir),
                "--force",
            ]
            print(f"[memory] {model} ({variant}): {count} patches, {workers} workers …", file=sys.stderr)
            with bench_lock():
                result = cli_memory(cmd)
            result.update(variant=variant, patches=count, workers=workers, patches_per_s=count / result["wall_s"])
            rows.append(result)
    command = " ".join(
        [
            "atlaspatch embed-patches --slide SLIDE --h5 H5 -o OUT --encoders",
            model,
            *(["--feature-plugin bench/bench_embed_patches.py"] if model.startswith(TINY) else []),
            f"--feature-device {args.device} --feature-precision {args.precision} --feature-batch-size "
            f"{args.batch_size} --feature-num-workers {workers} --model-dir DIR --force",
        ]
    )
    return {"model": model, "tiled_h5": str(dense), "available": available, "rows": rows, "command": command}


# --------------------------------------------------------------------------------------------------- report


def fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Embed-patches benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; device "
        f"{m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}",
        f"Python {m['python']}; atlaspatch {m['atlaspatch']}; torch {m['torch']} ({m['torch_threads']} intra-op "
        f"threads, {m['torch_parallel']}); timm {m['timm']}; openslide {m['openslide']}; h5py {m['h5py']}",
        f"Slide: {results['slide']} ({results['slide_patches']} patches of {PATCH_SIZE} px at {TARGET_MAG}×). "
        f"Load average (1, 5, 15 min) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}: other work on "
        "the machine shows up as noise.",
        "",
        "**Weights are random-init** (the real architectures, written by the benchmark; nothing downloadable "
        "here): the figures are throughput only.",
        "",
    ]
    ls_workers = results.get("lazyslide_workers", [])
    if results["models"]:
        lines += [
            f"Throughput, patches/s (median of the reps); in brackets ÷ the bare forward (target ≥ {TARGET_RATIO:g}):",
            "",
            "| model | N | batch | reps | bare forward | "
            + " | ".join(f"embed_patches, {w} worker{'s' if w != 1 else ''}" for w in results["workers"])
            + " | serial reader | "
            + " | ".join(f"LazySlide, {w} worker{'s' if w != 1 else ''}" for w in ls_workers)
            + (" | best embed_patches ÷ best LazySlide |" if ls_workers else ""),
            "|---|---:|---:|---:|---:|" + "---:|" * (len(results["workers"]) + 1 + len(ls_workers) + bool(ls_workers)),
        ]
        for r in results["models"]:
            s = r["summary"]
            cells = []
            for w in results["workers"]:
                e = s.get(f"stage_w{w}")
                cells.append("–" if e is None else f"**{fmt(e['patches_per_s'], 2)}** ({e['ratio']:.2f})")
            ser = s.get("serial")
            cells.append("–" if ser is None else f"{fmt(ser['patches_per_s'], 2)} ({ser['ratio']:.2f})")
            for w in ls_workers:
                e = s.get(f"lazyslide_w{w}")
                cells.append("–" if e is None else f"{fmt(e['patches_per_s'], 2)} ({e['ratio']:.2f})")
            if ls_workers:
                vs = s.get("vs_lazyslide")
                cells.append("–" if vs is None else f"**{vs:.2f}×**")
            lines.append(
                f"| {r['model']} ({r['family']}, {r['dim']}-d; {r['preprocess']}) | {r['patches']} | "
                f"{r['batch_size']} | {r['reps']} | {fmt(s['bare']['patches_per_s'], 2)} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            "Where embed_patches' time goes (medians): *first batch* = call → first batch at the model (worker "
            "start, first read; the fork server is already up); *waiting* = the model idle between batches, "
            "waiting for the loader; *forward* = the model's time inside the stage ÷ the same forward alone "
            "(> 1: the workers' CPU work slows it); *after* = rename, attributes, atomic replace; *steady* = "
            "patches/s from the first batch out to the last, ÷ the bare forward.",
            "",
            "| model | workers | first batch s | waiting s | forward | after s | steady |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["models"]:
            for w in results["workers"]:
                e = r["summary"].get(f"stage_w{w}")
                if e is None or "first_batch_s" not in e:
                    continue
                lines.append(
                    f"| {r['model']} | {w} | {e['first_batch_s']:.2f} | {e['wait_s']:.2f} | "
                    f"{e['forward_slowdown']:.3f}× | {e['after_last_s']:.2f} | {fmt(e.get('steady_ratio'), 2)} |"
                )
        lines.append("")
        for r in results["models"]:
            best = max((v for k, v in r["summary"].items() if k.startswith("stage_")), key=lambda e: e["ratio"])
            ser = r["summary"].get("serial")
            lines.append(
                f"- {r['model']}: best embed_patches {best['ratio']:.2f} of the bare forward "
                f"({'meets' if best['ratio'] >= TARGET_RATIO else 'MISSES'} the {TARGET_RATIO:g} target)"
                + (f", {best['patches_per_s'] / ser['patches_per_s']:.2f}× the serial reader" if ser else "")
                + f"; model load {r['load_s']:.1f} s; reading + preprocessing on one thread "
                f"{1000 * r['preload_s'] / r['patches']:.1f} ms/patch vs the forward's "
                f"{1000 / r['summary']['bare']['patches_per_s']:.0f} ms/patch."
            )
            vs = r["summary"].get("vs_lazyslide")
            if vs is not None:
                check = r["lazyslide"].get("feature_check", {})
                lines.append(
                    f"  vs LazySlide {r['lazyslide']['versions']['lazyslide']} `feature_extraction` (best of "
                    f"num_workers {', '.join(map(str, ls_workers))}): **{vs:.2f}×** "
                    f"({'meets' if vs >= TARGET_VS_LAZYSLIDE else 'MISSES'} the {TARGET_VS_LAZYSLIDE:g}× target); "
                    f"features agree to max |Δ| {check.get('max_abs_diff', float('nan')):.2e} (largest |feature| "
                    f"{check.get('max_abs_feature', float('nan')):.2e}) on the first {check.get('patches')} patches."
                )
        lines.append("")
    v = results.get("variants")
    if v:
        lines += [
            f"Stage variants ({v['model']}, {v['patches']} patches, median of {v['reps']} interleaved reps; bare "
            f"forward {v['bare_patches_per_s']:.2f} patches/s). As shipped, workers resize/crop and send uint8 "
            "NHWC, normalised on the model's device right before the forward; *float32 hand-over*: workers send "
            "normalised float32 NCHW (4× the bytes; the stage before uint8 batches); *glibc default malloc*: the "
            "workers without the stage's `mallopt(M_MMAP_THRESHOLD, 4 MiB)`. Both monkeypatched into embed_patches:",
            "",
            "| variant | workers | patches/s | ratio | forward | waiting s | first batch s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in v["rows"]:
            lines.append(
                f"| {row['variant']} | {row['workers']} | {row['patches_per_s']:.2f} | **{row['ratio']:.2f}** | "
                f"{row['forward_slowdown']:.3f}× | {row['wait_s']:.2f} | {row['first_batch_s']:.2f} |"
            )
        lines.append("")
    mem = results.get("memory")
    if mem:
        lines += [
            f"Peak memory vs patch count: `{mem['command']}`, a fresh process per count, on the slide tiled with "
            f"--step-size 112 ({mem['available']} patches) cut to the first N rows. Tree = the CLI process, its "
            "forkserver and the DataLoader workers, polled every 0.1 s (RSS sums count shared pages once per "
            "process; PSS splits them).",
            "",
            "| variant | patches | wall s | patches/s | tree peak PSS MB | … CLI | … fork server | … workers "
            "| tree peak RSS MB | CLI peak RSS (VmHWM) MB | largest worker peak RSS MB | processes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in mem["rows"]:
            role = row["peak_pss_mb_by_role"]
            lines.append(
                f"| {row['variant']} | {row['patches']} | {row['wall_s']:.1f} | {row['patches_per_s']:.0f} | "
                f"**{row['tree_peak_pss_mb']:.0f}** | {role.get('cli', 0):.0f} | {role.get('forkserver', 0):.0f} | "
                f"{role.get('worker', 0):.0f} | {row['tree_peak_rss_mb']:.0f} | {row['cli_hwm_mb']:.0f} | "
                f"{row['worker_hwm_mb']:.0f} | {row['max_processes']} |"
            )
        lines.append("")
        for variant in dict.fromkeys(row["variant"] for row in mem["rows"]):
            rows = [row for row in mem["rows"] if row["variant"] == variant]
            if len(rows) > 1:
                first, last = rows[0], rows[-1]
                lines.append(
                    f"- {variant}, {first['patches']} → {last['patches']} patches: tree peak PSS "
                    f"{last['tree_peak_pss_mb'] - first['tree_peak_pss_mb']:+.0f} MB, CLI process peak RSS "
                    f"{last['cli_hwm_mb'] - first['cli_hwm_mb']:+.0f} MB, largest worker peak RSS "
                    f"{last['worker_hwm_mb'] - first['worker_hwm_mb']:+.0f} MB."
                )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-cli"]:
        return run_cli_variant(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--slide", type=Path, default=DEFAULT_SLIDE, help="default: built with make_slide.py if missing"
    )
    parser.add_argument(
        "--models",
        default="lunit_vit_small_patch8_dino,resnet50,my_resnet18",
        help="comma-separated registry names (my_resnet18 = examples/feature_plugins/my_resnet18.py)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=parse_ints, default=[1, 2], help="DataLoader workers to try, e.g. 1,2")
    parser.add_argument("--patches", type=int, help="patches per run (default: about --seconds of bare forward)")
    parser.add_argument(
        "--model-patches",
        type=lambda text: {k: int(v) for k, _, v in (i.partition("=") for i in text.replace(",", " ").split())},
        default={},
        help="per-model patch counts, e.g. resnet50=256,lunit_vit_small_patch8_dino=96 (beat --patches)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="target length of one run when --patches is unset")
    parser.add_argument("--max-patches", type=int, default=2048, help="cap of the automatic patch count")
    parser.add_argument(
        "--reps", type=int, default=3, help="interleaved repetitions (bare, stage per worker count, serial)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--skip-serial", action="store_true")
    parser.add_argument(
        "--lazyslide-workers",
        type=parse_ints,
        default=[0, 2],
        help="num_workers of LazySlide's feature_extraction to try (0 = its default)",
    )
    parser.add_argument("--lazyslide-python", type=Path, default=LAZYSLIDE_PYTHON)
    parser.add_argument("--skip-lazyslide", action="store_true")
    parser.add_argument("--variant-model", default="my_resnet18", help="model of the stage-variant runs")
    parser.add_argument("--variant-seconds", type=float, default=10, help="length of one variant run")
    parser.add_argument("--variant-reps", type=int, default=2)
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--memory-model", default=TINY, help=f"encoder of the memory sweep (default {TINY})")
    parser.add_argument("--memory-counts", type=parse_ints, default=[1000, 4000, 16000])
    parser.add_argument(
        "--memory-variants",
        type=lambda text: text.replace(",", " ").split(),
        default=["baseline", "glibc-default"],
        help="baseline (the CLI as shipped), glibc-default (workers without the stage's mallopt: the stage before "
        "6868c46), mmap-threshold (workers with it: for checkouts before 6868c46)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    slide = args.slide.resolve()
    if not slide.exists():
        if slide != DEFAULT_SLIDE.resolve():
            parser.error(f"{slide} does not exist")
        sys.path.insert(0, str(BENCH))
        import make_slide

        make_slide.main([str(slide), "--size", "32768", "--mpp", "0.5", "--seed", "0"])
    work = args.out / "embed" / slide.stem
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "embed" / "random-weights"
    import h5py

    from atlaspatch.encoders.patch import patch_encoder_registry

    tiled = tile(slide, work / "tiled")
    with h5py.File(tiled, "r") as handle:
        slide_patches = int(handle.attrs["num_patches"])
    registry = patch_encoder_registry([Path(__file__).resolve(), RESNET18_PLUGIN])
    results: dict = {
        "machine": machine_info(args.device),
        "slide": str(slide.relative_to(REPO) if slide.is_relative_to(REPO) else slide),
        "slide_patches": slide_patches,
        "reps": args.reps,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "lazyslide_workers": [] if args.skip_lazyslide else args.lazyslide_workers,
        "models": [],
    }
    started = time.perf_counter()
    models = [m for m in args.models.replace(",", " ").split() if m]
    if models and max(args.workers) > 0:
        results["forkserver_warmup_s"] = start_forkserver(registry, slide, tiled, work, args)
    partial = args.out / "embed_patches.partial.json"  # what is done so far, should a later part fail
    for name in models:
        results["models"].append(bench_model(name, registry, slide, tiled, work, model_dir, args))
        partial.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if not args.skip_variants and args.variant_model:
        if "forkserver_warmup_s" not in results:
            results["forkserver_warmup_s"] = start_forkserver(registry, slide, tiled, work, args)
        results["variants"] = bench_variants(args.variant_model, registry, slide, tiled, work, model_dir, args)
    if not args.skip_memory:
        random_weights(registry.get(args.memory_model), model_dir)
        results["memory"] = memory_sweep(slide, work, args.memory_model, model_dir, args.memory_counts, args)
    results["bench_seconds"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = loadavg()
    text = markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embed_patches.md").write_text(text + "\n")
    (args.out / "embed_patches.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(text)
    print(
        f"(benchmark took {results['bench_seconds']:.0f} s; wrote {args.out / 'embed_patches.md'} and .json)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
