"""``encode-slide`` in one process: segment → tile → patch features → slide embeddings for many slides.

Everything that can be decided without touching a slide is decided first: the encoders' shared patch geometry, the
patch encoders they need, existing H5 files whose geometry differs (refused, listed), and every weights file some
slide will need. Then each stage runs over all slides, loading each model once; a slide that fails at any stage is
recorded with its one-line reason and skipped by the later stages, and the others go on. Every stage is the same
function the stage commands (and so Nextflow) call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .encoders.slide import SlideEncoderPlan, plan_slide_encoders, slide_encoder_registry
from .encoders.slide.spec import SlideEncoderSpec
from .errors import AtlasPatchError, one_line
from .h5.inspect import inspect_h5
from .pipeline import SegmentTilePipeline, SegmentTileRequest, SlideOutcome
from .reporting import PipelineProgress
from .slides.discovery import SlideSource, mpp_override_for
from .stages.embed_patches import EmbedOptions, embed_patches_locked, missing_encoders
from .stages.embed_slide import embed_slide_locked, feature_dims, missing_embeddings

log = logging.getLogger("atlaspatch")


@dataclass(frozen=True)
class EncodeSlideRequest:
    tiling: SegmentTileRequest  # output, geometry, segmentation, force, mpp overrides, visualisations
    slide_encoders: tuple[str, ...]
    feature_batch_size: int = 32
    feature_num_workers: int = 4
    feature_device: str | None = None  # None: the --device
    feature_precision: str = "float16"
    feature_plugins: tuple[str, ...] = ()
    allow_mag_mismatch: bool = False

    @property
    def force(self) -> bool:
        return self.tiling.force


@dataclass
class EncodeOutcome:
    stem: str
    path: Path
    status: str = "pending"  # ok | failed
    h5: str = "-"  # tiled | reused
    num_patches: int | None = None
    features_computed: list[str] = field(default_factory=list)
    features_reused: list[str] = field(default_factory=list)
    embeddings_computed: list[str] = field(default_factory=list)
    embeddings_reused: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def _count(self, names: list[str]) -> int | None:
        return None if self.failed and not names else len(names)  # "-" for a stage the slide never reached

    @property
    def n_features_computed(self) -> int | None:
        return self._count(self.features_computed)

    @property
    def n_features_reused(self) -> int | None:
        return self._count(self.features_reused)

    @property
    def n_embeddings_computed(self) -> int | None:
        return self._count(self.embeddings_computed)

    @property
    def n_embeddings_reused(self) -> int | None:
        return self._count(self.embeddings_reused)

    def fail(self, exc: BaseException) -> None:
        self.status, self.note = "failed", one_line(exc)
        if not isinstance(exc, AtlasPatchError):
            log.debug("unexpected failure on %s", self.stem, exc_info=exc)


SUMMARY_COLUMNS = (
    ("H5", "h5"),
    ("patches", "num_patches"),
    ("features computed", "n_features_computed"),
    ("features reused", "n_features_reused"),
    ("embeddings computed", "n_embeddings_computed"),
    ("embeddings reused", "n_embeddings_reused"),
)


class ModelCache:
    """Each model is loaded once for the whole run, on first use."""

    def __init__(self, load: Callable[[Any], Any]) -> None:
        self._load = load
        self._models: dict[str, Any] = {}

    def __call__(self, spec: Any) -> Any:
        if spec.name not in self._models:
            self._models[spec.name] = self._load(spec)
        return self._models[spec.name]

    def clear(self) -> None:
        self._models.clear()


class EncodeSlidePipeline:
    def __init__(self, request: EncodeSlideRequest) -> None:
        self.request = request
        registry = slide_encoder_registry(request.feature_plugins)
        specs = [registry.get(name) for name in request.slide_encoders]
        tile = request.tiling.tile
        self.plan: SlideEncoderPlan = plan_slide_encoders(
            specs, tile.patch_size, tile.target_mag, request.allow_mag_mismatch
        )
        self.patch_specs = [registry.patch_encoders.get(name) for name in self.plan.patch_encoders]
        self.dims = feature_dims(specs, registry.patch_encoders)
        self.tiling = SegmentTilePipeline(request.tiling)

    @property
    def layout(self) -> Any:
        return self.request.tiling.layout

    @property
    def slide_specs(self) -> Sequence[SlideEncoderSpec]:
        return self.plan.encoders

    # ---- before any work
    def preflight(self, sources: Sequence[SlideSource]) -> dict[str, SlideOutcome]:
        """Refuses mismatching existing H5 files (all listed) and missing weights, before any slide is touched."""
        checked = self.tiling.preflight(list(sources))
        self._require_weights([s for s in sources if not checked[s.stem].failed])
        return checked

    def _require_weights(self, sources: Sequence[SlideSource]) -> None:
        from .encoders.patch.loading import require_weights
        from .encoders.slide.loading import require_slide_weights

        patch_needed, slide_needed = self._models_needed(sources)
        for spec in self.patch_specs:
            if spec.name in patch_needed:
                require_weights(spec, self.request.tiling.model_dir)
        for spec in self.slide_specs:
            if spec.name in slide_needed:
                require_slide_weights(spec, self.request.tiling.model_dir)

    def _models_needed(self, sources: Sequence[SlideSource]) -> tuple[set[str], set[str]]:
        """Names of the patch and slide encoders some slide will run (an unreadable H5 fails later, alone)."""
        all_patch = {spec.name for spec in self.patch_specs}
        all_slide = {spec.name for spec in self.slide_specs}
        if self.request.force:
            return all_patch, all_slide
        patch: set[str] = set()
        slide: set[str] = set()
        for source in sources:
            path = self.layout.h5(source.stem)
            try:
                state = inspect_h5(path)
                if not state.is_tiled:
                    return all_patch, all_slide
                patch |= {spec.name for spec in missing_encoders(state, self.patch_specs, False)}
                slide |= {spec.name for spec in missing_embeddings(path, self.slide_specs, False)}
            except AtlasPatchError:
                continue
        return patch, slide

    # ---- the run
    def run(
        self,
        sources: Sequence[SlideSource],
        checked: dict[str, SlideOutcome],
        progress: PipelineProgress | None = None,
    ) -> list[EncodeOutcome]:
        outcomes = {s.stem: EncodeOutcome(stem=s.stem, path=s.path) for s in sources}
        on_tiled = progress.slides("segment + tile", len(sources)) if progress else None
        for tiled in self.tiling.run(list(sources), on_done=on_tiled, outcomes=checked):
            self._record_tiling(outcomes[tiled.stem], tiled)
        on_patches = progress.patches("patch features", self._patches_to_embed(sources, outcomes)) if progress else None
        self._embed_patches(sources, outcomes, on_patches)
        on_embedded = progress.slides("slide embeddings", len(sources)) if progress else None
        self._embed_slides(sources, outcomes, on_embedded)
        return [outcomes[s.stem] for s in sources]

    def _patches_to_embed(self, sources: Sequence[SlideSource], outcomes: dict[str, EncodeOutcome]) -> int:
        total = 0
        for source in sources:
            outcome = outcomes[source.stem]
            if outcome.failed:
                continue
            try:
                state = inspect_h5(self.layout.h5(source.stem))
                todo = self.patch_specs if self.request.force else missing_encoders(state, self.patch_specs, False)
                total += len(todo) * int(state.num_patches or 0)
            except AtlasPatchError:
                continue
        return total

    @staticmethod
    def _record_tiling(outcome: EncodeOutcome, tiled: SlideOutcome) -> None:
        outcome.num_patches, outcome.seconds = tiled.num_patches, tiled.seconds
        if tiled.failed:
            outcome.status, outcome.note = "failed", tiled.note
            return
        outcome.h5 = tiled.status
        if not tiled.num_patches:
            outcome.status = "failed"
            outcome.note = "no tissue found: 0 patches, so there is nothing to embed"

    def _embed_patches(
        self, sources: Sequence[SlideSource], outcomes: dict[str, EncodeOutcome], on_patches: Any
    ) -> None:
        from .encoders.patch.loading import load_patch_encoder

        device = self.request.feature_device or self.request.tiling.device
        models = ModelCache(
            lambda spec: load_patch_encoder(spec, device, self.request.feature_precision, self.request.tiling.model_dir)
        )
        for source in sources:
            outcome = outcomes[source.stem]
            if outcome.failed:
                continue
            options = EmbedOptions(
                batch_size=self.request.feature_batch_size,
                num_workers=self.request.feature_num_workers,
                mpp=mpp_override_for(source.stem, self.request.tiling.mpp_overrides),
            )
            h5 = self.layout.h5(source.stem)
            started = time.perf_counter()
            try:
                computed, reused = embed_patches_locked(
                    source.path,
                    h5,
                    h5,
                    self.layout.lock(source.stem),
                    self.patch_specs,
                    models,
                    options,
                    force=self.request.force,
                    on_batch=on_patches,
                )
                outcome.features_computed, outcome.features_reused = list(computed), reused
            except Exception as exc:
                outcome.fail(exc)
            outcome.seconds += time.perf_counter() - started
        models.clear()  # the patch models' memory is free for the slide encoders

    def _embed_slides(self, sources: Sequence[SlideSource], outcomes: dict[str, EncodeOutcome], on_done: Any) -> None:
        from .encoders.slide.loading import load_slide_encoder

        models = ModelCache(
            lambda spec: load_slide_encoder(spec, self.request.tiling.device, self.request.tiling.model_dir)
        )
        for source in sources:
            outcome = outcomes[source.stem]
            if not outcome.failed:
                h5 = self.layout.h5(source.stem)
                started = time.perf_counter()
                try:
                    result = embed_slide_locked(
                        h5,
                        h5,
                        self.layout.lock(source.stem),
                        self.slide_specs,
                        self.dims,
                        models,
                        force=self.request.force,
                        allow_mag_mismatch=self.request.allow_mag_mismatch,
                    )
                    outcome.embeddings_computed, outcome.embeddings_reused = result.computed, result.reused
                    outcome.status = "ok"
                except Exception as exc:
                    outcome.fail(exc)
                outcome.seconds += time.perf_counter() - started
            if on_done:
                on_done(outcome)
        models.clear()
