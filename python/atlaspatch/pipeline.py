"""In-process segment + tile over many slides: reuse rules, locks, batching, per-slide outcomes.

The stage commands (one slide each, for Nextflow) and `segment-and-get-coords` call the same functions.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import BoundedSemaphore
from typing import Any

from .errors import AtlasPatchError, ReuseConflict, one_line
from .h5 import schema
from .h5.atomic import remove_leftover_temps
from .h5.inspect import H5State, describe_mismatches, geometry_mismatches, inspect_h5, made_from_another_slide
from .h5.locks import SlideLock
from .outputs import OutputLayout
from .segmentation.registry import Segmenter, build_segmenter
from .slides.discovery import SlideSource, mpp_override_for
from .slides.reader import Slide, open_slide
from .stages.segment import TissueSegmentation, read_tissue, segment_slides
from .stages.tile import TileOptions, clear_patch_images, export_patch_images, geometry_attrs, write_tiled_h5
from .tiling.geometry import plan_geometry
from .visualize import VisualizeOptions, write_visualizations

log = logging.getLogger("atlaspatch")


@dataclass(frozen=True)
class SegmentTileRequest:
    output: Path
    tile: TileOptions
    segmenter: str = "sam2"
    device: str = "cuda"
    model_dir: Path | None = None
    seg_batch_size: int = 1
    max_open_slides: int = 200
    force: bool = False
    mpp_overrides: dict[str, float] | None = None
    visualize: VisualizeOptions = field(default_factory=VisualizeOptions)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output)


@dataclass
class SlideOutcome:
    stem: str
    path: Path
    status: str = "pending"  # tiled | reused | failed
    num_patches: int | None = None
    note: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def wanted_geometry(slide: Slide, request: SegmentTileRequest) -> dict[str, Any]:
    options = request.tile
    geometry = plan_geometry(slide, options.patch_size, options.step_size, options.target_mag)
    return geometry_attrs(geometry, options, request.segmenter)


def open_source(source: SlideSource, request: SegmentTileRequest) -> Slide:
    return open_slide(source.path, source.stem, mpp_override_for(source.stem, request.mpp_overrides))


def reuse_conflict(source: SlideSource, state: H5State, request: SegmentTileRequest) -> str | None:
    """Why an existing H5 (tissue only, or tiled) cannot serve this request (None when it can)."""
    with open_source(source, request) as slide:
        return made_from_another_slide(state, slide.dimensions) or _geometry_conflict(slide, state, request)


def _geometry_conflict(slide: Slide, state: H5State, request: SegmentTileRequest) -> str | None:
    if not state.is_tiled:
        return None
    mismatches = geometry_mismatches(state, wanted_geometry(slide, request))
    return describe_mismatches(mismatches) if mismatches else None


def refuse_mismatching_outputs(
    sources: list[SlideSource], request: SegmentTileRequest, outcomes: dict[str, SlideOutcome]
) -> set[str]:
    """Before any work: an existing H5 with other geometry is never overwritten without --force.

    Returns the stems whose existing H5 already serves the request.
    """
    reusable: set[str] = set()
    if request.force:
        return reusable
    conflicts: list[str] = []
    for source in sources:
        try:
            state = inspect_h5(request.layout.h5(source.stem))
            if state.exists:
                reason = reuse_conflict(source, state, request)
                if reason:
                    conflicts.append(f"{source.stem}: {reason}")
                elif state.is_tiled:
                    reusable.add(source.stem)
        except AtlasPatchError as exc:
            outcomes[source.stem].status, outcomes[source.stem].note = "failed", one_line(exc)
    if conflicts:
        raise ReuseConflict(
            f"existing H5 files in {request.layout.patches_dir} were made with other settings — "
            + "; ".join(conflicts)
            + " — use --force to rebuild them or choose another --output"
        )
    return reusable


def reusable_tissue(state: H5State, request: SegmentTileRequest) -> TissueSegmentation | None:
    if request.force or not state.has_tissue or state.tissue_attrs.get(schema.TISSUE_SEGMENTER) != request.segmenter:
        return None
    import h5py

    with h5py.File(state.path, "r") as handle:
        return read_tissue(handle)


@dataclass
class _Claimed:
    source: SlideSource
    outcome: SlideOutcome
    lock: SlideLock
    slide: Slide | None = None
    state: H5State | None = None
    tissue: TissueSegmentation | None = None
    started: float = field(default_factory=time.perf_counter)


class SegmentTilePipeline:
    def __init__(self, request: SegmentTileRequest, segmenter: Segmenter | None = None) -> None:
        self.request = request
        self._segmenter = segmenter

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.request.segmenter, self.request.device, self.request.model_dir)
        return self._segmenter

    def preflight(self, sources: list[SlideSource]) -> dict[str, SlideOutcome]:
        """Check every existing output before any work; raises ReuseConflict listing all mismatches.

        Also loads the segmenter when some slide will need it, so missing weights stop the run up front.
        """
        self.request.layout.ensure_writable()
        outcomes = {s.stem: SlideOutcome(stem=s.stem, path=s.path) for s in sources}
        reusable = refuse_mismatching_outputs(sources, self.request, outcomes)
        if any(s.stem not in reusable and not outcomes[s.stem].failed for s in sources):
            _ = self.segmenter
        return outcomes

    def run(
        self, sources: list[SlideSource], on_done: Any = None, outcomes: dict[str, SlideOutcome] | None = None
    ) -> list[SlideOutcome]:
        outcomes = outcomes if outcomes is not None else self.preflight(sources)
        pending = [s for s in sources if not outcomes[s.stem].failed]
        for s in sources:
            if outcomes[s.stem].failed and on_done:
                on_done(outcomes[s.stem])
        open_slots = BoundedSemaphore(max(1, self.request.max_open_slides))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tile") as pool:
            futures: list[Future[None]] = []
            # a batch is claimed (and kept open) whole before any of it is released: never wider than the bound
            batch_size = max(1, min(self.request.seg_batch_size, self.request.max_open_slides))
            for start in range(0, len(pending), batch_size):
                claimed = [
                    self._claim(s, outcomes[s.stem], open_slots, on_done) for s in pending[start : start + batch_size]
                ]
                claimed = [c for c in claimed if c is not None]
                self._segment_batch(claimed, open_slots, on_done)
                for item in claimed:
                    if not item.outcome.failed:
                        futures.append(pool.submit(self._tile_and_release, item, open_slots, on_done))
            for future in futures:
                future.result()
        return [outcomes[s.stem] for s in sources]

    def _finish(self, item: _Claimed, open_slots: BoundedSemaphore, on_done: Any) -> None:
        if item.slide is not None:
            item.slide.close()
        item.lock.release()
        open_slots.release()
        item.outcome.seconds = time.perf_counter() - item.started
        if on_done:
            on_done(item.outcome)

    def _fail(self, item: _Claimed, exc: BaseException, open_slots: BoundedSemaphore, on_done: Any) -> None:
        item.outcome.status, item.outcome.note = "failed", one_line(exc)
        if not isinstance(exc, AtlasPatchError):
            log.debug("unexpected failure on %s", item.source.stem, exc_info=exc)
        self._finish(item, open_slots, on_done)

    def _claim(
        self, source: SlideSource, outcome: SlideOutcome, open_slots: BoundedSemaphore, on_done: Any
    ) -> _Claimed | None:
        """Lock the slide, then decide under the lock: reuse, tile only, or segment and tile."""
        layout = self.request.layout
        open_slots.acquire()
        item = _Claimed(source, outcome, SlideLock(layout.lock(source.stem), slide=source.stem, phase="tile"))
        try:
            item.lock.acquire()
            remove_leftover_temps(layout.h5(source.stem))
            item.state = inspect_h5(layout.h5(source.stem)) if not self.request.force else None
            item.slide = open_source(source, self.request)
            if item.state is not None and item.state.exists:
                reason = made_from_another_slide(item.state, item.slide.dimensions) or _geometry_conflict(
                    item.slide, item.state, self.request
                )
                if reason:  # changed by another run since the preflight
                    raise ReuseConflict(f"{source.stem}: {reason}; use --force")
            if item.state is not None and item.state.is_tiled:
                outcome.status, outcome.num_patches = "reused", item.state.num_patches
                self._complete_optional_outputs(item)
                self._finish(item, open_slots, on_done)
                return None
            plan_geometry(
                item.slide, self.request.tile.patch_size, self.request.tile.step_size, self.request.tile.target_mag
            )
            if item.state is not None:
                item.tissue = reusable_tissue(item.state, self.request)
            return item
        except Exception as exc:
            self._fail(item, exc, open_slots, on_done)
            return None

    def _segment_batch(self, claimed: list[_Claimed], open_slots: BoundedSemaphore, on_done: Any) -> None:
        todo = [c for c in claimed if c.tissue is None]
        if not todo:
            return
        try:
            for item, tissue in zip(todo, segment_slides([c.slide for c in todo], self.segmenter), strict=True):
                item.tissue = tissue
            return
        except Exception:  # retried one slide at a time below, to fail only the bad one
            pass
        for item in todo:
            try:
                item.tissue = segment_slides([item.slide], self.segmenter)[0]
            except Exception as exc:
                self._fail(item, exc, open_slots, on_done)

    def _tile_and_release(self, item: _Claimed, open_slots: BoundedSemaphore, on_done: Any) -> None:
        layout = self.request.layout
        try:
            images_dir = layout.images_dir if self.request.tile.save_images else None
            clear_patch_images(layout.images_dir, item.source.stem)
            result = write_tiled_h5(
                layout.h5(item.source.stem), item.slide, item.tissue, self.request.tile, images_dir=images_dir
            )
            item.outcome.status, item.outcome.num_patches = "tiled", result.num_patches
            if result.num_patches == 0:
                item.outcome.note = "no tissue found: 0 patches"
            write_visualizations(
                layout.visualization_dir, item.slide, item.tissue, layout.h5(item.source.stem), self.request.visualize
            )
            self._finish(item, open_slots, on_done)
        except Exception as exc:
            self._fail(item, exc, open_slots, on_done)

    def _complete_optional_outputs(self, item: _Claimed) -> None:
        """A reused H5 still gets the PNGs and overlays this run asks for."""
        path = self.request.layout.h5(item.source.stem)
        if self.request.tile.save_images:
            export_patch_images(item.slide, path, self.request.layout.images_dir, self.request.tile.workers)
        if not self.request.visualize.any:
            return
        import h5py

        with h5py.File(path, "r") as handle:
            tissue = read_tissue(handle) if schema.TISSUE in handle else None
        if tissue is not None:
            write_visualizations(
                self.request.layout.visualization_dir, item.slide, tissue, path, self.request.visualize
            )
