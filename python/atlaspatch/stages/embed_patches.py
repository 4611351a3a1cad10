"""Embed-patches stage: the patches of a tiled H5 → ``features/<encoder>`` (N, D) float32, row-aligned with coords.

Patches stream from the slide through a DataLoader whose workers each open the slide once and read whole
batches in coordinate order, resizing and normalising off the main thread. Features go batch by batch into a
temporary dataset of a temporary copy of the H5; the dataset is renamed into place and marked complete, then the
copy replaces the target. A run killed at any point leaves the previous H5 untouched and a temp file the next run
removes; a partial dataset found in an input (e.g. from AtlasPatch) is rebuilt.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..devices import usable_cpus
from ..errors import H5Error, SlideError
from ..h5 import schema
from ..h5.atomic import atomic_h5
from ..h5.attrs import write_attrs
from ..h5.inspect import H5State, complete_features, inspect_h5, made_from_another_slide
from ..slides.reader import Slide, open_slide
from .tile import read_patch

log = logging.getLogger("atlaspatch")

BatchCallback = Callable[[int], None]  # called with the number of patches just embedded


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 32
    num_workers: int = 4
    mpp: float | None = None  # the slide's mpp override, if any (pixels do not depend on it; opening does)


class PatchBatches:
    """Map-style dataset whose item i is batch i: patches [i·B, (i+1)·B) in coordinate order, resized and cropped,
    uint8 (B, S, S, 3); the encoder normalises them on its device.

    Each process (the main one, or a DataLoader worker) opens the slide once, on first use.
    """

    def __init__(
        self,
        slide_path: Path,
        coords: np.ndarray,
        patch_size: int,
        preprocess: Any,
        batch_size: int,
        mpp: float | None = None,
    ) -> None:
        self.slide_path = Path(slide_path)
        self.coords = coords
        self.patch_size = patch_size
        self.preprocess = preprocess
        self.batch_size = max(1, batch_size)
        self.mpp = mpp
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def _open(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, mpp_override=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, index: int) -> Any:
        from ..encoders.patch.transforms import to_uint8_batch

        if not 0 <= index < len(self):
            raise IndexError(index)
        slide = self._open()
        rows = self.coords[index * self.batch_size : (index + 1) * self.batch_size]
        return to_uint8_batch([read_patch(slide, row, self.patch_size) for row in rows], self.preprocess)

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"], state["_pid"] = None, -1  # workers open their own handle
        return state


M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
BATCH_MMAP_THRESHOLD = 4 << 20


def _fixed_mmap_threshold(threshold: int = BATCH_MMAP_THRESHOLD) -> None:
    """Give every allocation ≥ 4 MiB (each batch tensor) its own mmap, returned to the OS when freed.

    glibc's default threshold rises to the largest block freed so far, after which batch tensors are carved from
    the heap and fragment it: a worker's RSS then grows with the number of patches (bench/bench_embed_patches.py
    measured +1.5 GB per worker from 1k to 16k patches; flat with this).
    """
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def _exit_when_gone(pid: int) -> None:
    """End this worker when process `pid` (the stage) is gone, however it died.

    Workers are children of the fork server, not of the stage, so torch's own watchdog (which checks the parent)
    would keep them, and the fork server waiting for them, alive forever after a SIGKILL of the stage.
    """
    import select
    import threading
    import time

    def watch() -> None:
        try:
            handle = os.pidfd_open(pid)
            select.select([handle], [], [])  # readable once the process has exited
        except (AttributeError, OSError):  # no pidfd (old kernel): poll
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="atlaspatch-stage-watch", daemon=True).start()


def _init_worker(stage_pid: int, _: int) -> None:
    """Workers decode one batch each; torch/OpenCV thread pools inside them would only fight the main process."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _fixed_mmap_threshold()
    _exit_when_gone(stage_pid)


def worker_context() -> Any:
    """Workers come from a fork server, not from this process: a plain fork would inherit OpenCV's and OpenSlide's
    thread pools mid-use and can deadlock (seen with cv2 after the tile stage ran in the same process)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["atlaspatch.stages.embed_patches", "atlaspatch.encoders.patch.transforms"])
    return context


def start_worker_server(num_workers: int) -> None:
    """Starts the DataLoader workers' fork server now: it imports torch (≈ 2 s) while this process does too and
    loads the model, instead of after, when the first batch is asked for."""
    if num_workers > 0:
        worker_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def patch_loader(dataset: PatchBatches, num_workers: int, pin_memory: bool) -> Any:
    """One DataLoader for the whole slide: batches arrive in order, `num_workers` of them prepared ahead."""
    from torch.utils.data import DataLoader

    workers = max(0, min(num_workers, len(dataset), usable_cpus()))  # more workers than cores gains nothing
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        multiprocessing_context=worker_context() if workers else None,
    )


def feature_attrs(encoder: Any, num_patches: int, patch_size: int, seconds: float) -> dict[str, Any]:
    spec = encoder.spec
    return {
        schema.FEATURE_ENCODER: spec.name,
        "name": spec.name,
        schema.FEATURE_DIM: spec.dim,
        schema.FEATURE_PRECISION: encoder.precision,
        schema.FEATURE_WEIGHTS: encoder.weights_sha256,
        "weights_source": encoder.weights_source,
        schema.NUM_PATCHES: num_patches,
        "patch_size": patch_size,
        "input_size": spec.preprocess.input_size,
        "device": encoder.device,
        "seconds": round(seconds, 3),
        "creation_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        schema.TOOL_VERSION: __version__,
    }


def _drop_features(handle: h5py.File, name: str) -> None:
    group = handle.require_group(schema.FEATURES)
    for key in (name, schema.TEMP_FEATURE_PREFIX + name):
        if key in group:
            del group[key]


def write_features(
    handle: h5py.File,
    slide_path: Path,
    encoder: Any,
    options: EmbedOptions,
    on_batch: BatchCallback | None = None,
) -> int:
    """Compute features/<encoder> into an open (temporary) H5; returns the number of rows written."""
    coords = handle[schema.COORDS][...]
    total = len(coords)
    patch_size = int(handle.attrs["patch_size"])
    name, dim = encoder.spec.name, encoder.spec.dim
    _drop_features(handle, name)
    group = handle[schema.FEATURES]
    temp_name = schema.TEMP_FEATURE_PREFIX + name
    chunk_rows = max(1, min(options.batch_size, total)) if total else None
    dataset = group.create_dataset(
        temp_name, shape=(total, dim), dtype=np.float32, chunks=(chunk_rows, dim) if chunk_rows else None
    )
    started = time.perf_counter()
    batches = PatchBatches(slide_path, coords, patch_size, encoder.spec.preprocess, options.batch_size, options.mpp)
    written = 0
    try:
        for images in patch_loader(batches, options.num_workers, pin_memory=encoder.device.startswith("cuda")):
            features = encoder.embed(images).numpy()
            dataset[written : written + len(features)] = features
            written += len(features)
            if on_batch is not None:
                on_batch(len(features))
    finally:
        batches.close()
    if written != total:
        raise H5Error(f"{name}: embedded {written} patches but coords has {total} rows")
    group.move(temp_name, name)
    write_attrs(group[name], feature_attrs(encoder, total, patch_size, time.perf_counter() - started))
    group[name].attrs[schema.FEATURE_COMPLETE] = True  # last: marks the dataset finished
    return total


def check_slide_matches(slide_path: Path, state: H5State, mpp: float | None) -> None:
    """Refuse to read pixels from a slide other than the one the H5 was tiled on."""
    with open_slide(slide_path, mpp_override=mpp) as slide:
        dimensions = slide.dimensions
    other = made_from_another_slide(state, dimensions)
    if other:
        raise SlideError(f"{other}: pass the slide the H5 was made from")


def missing_encoders(state: H5State, specs: list[Any], force: bool) -> list[Any]:
    """The encoders whose features the H5 lacks (or holds only partially); all of them with force."""
    if force:
        return list(specs)
    return [spec for spec in specs if not complete_features(state, spec.name, spec.dim)]


def embed_patches(
    slide_path: Path,
    h5_in: Path,
    h5_out: Path,
    specs: list[Any],
    get_encoder: Callable[[Any], Any],
    options: EmbedOptions,
    on_batch: BatchCallback | None = None,
) -> dict[str, int]:
    """Add each spec's features to the H5, committing after each encoder; returns rows per encoder.

    ``get_encoder(spec)`` gives the loaded encoder (so a caller can load each model once for many slides).
    ``h5_in`` is never modified unless it is ``h5_out`` itself, and then only by an atomic replace.
    """
    source = Path(h5_in)
    computed: dict[str, int] = {}
    if specs:
        _fixed_mmap_threshold()  # this process allocates a float batch and the model's activations per batch, too
    for spec in specs:
        encoder = get_encoder(spec)
        with atomic_h5(h5_out, start_from=source) as handle:
            computed[spec.name] = write_features(handle, slide_path, encoder, options, on_batch)
        source = h5_out
    if source != h5_out and h5_out.resolve() != source.resolve():
        with atomic_h5(h5_out, start_from=source):
            pass
    return computed


def embed_patches_locked(
    slide_path: Path,
    h5_in: Path,
    h5_out: Path,
    lock_path: Path,
    specs: list[Any],
    get_encoder: Callable[[Any], Any],
    options: EmbedOptions,
    force: bool = False,
    on_batch: BatchCallback | None = None,
) -> tuple[dict[str, int], list[str]]:
    """embed_patches for the encoders still missing, under the slide's lock (stage command and pipeline).

    Returns (rows per computed encoder, names reused).
    """
    from ..h5.atomic import remove_leftover_temps
    from ..h5.locks import SlideLock

    with SlideLock(lock_path, slide=Path(h5_out).stem, phase="embed-patches"):
        remove_leftover_temps(h5_out)
        todo = missing_encoders(read_state(h5_in), specs, force)  # under the lock: another run may have added some
        computed = embed_patches(slide_path, h5_in, h5_out, todo, get_encoder, options, on_batch)
    return computed, [spec.name for spec in specs if spec.name not in computed]


def require_tiled(state: H5State) -> None:
    if not state.is_tiled:
        raise H5Error(f"{state.path} has no finished coords: run `atlaspatch tile` on the slide first")


def read_state(h5_in: Path) -> H5State:
    state = inspect_h5(h5_in)
    if not state.exists:
        raise H5Error(f"{h5_in} does not exist")
    require_tiled(state)
    return state
