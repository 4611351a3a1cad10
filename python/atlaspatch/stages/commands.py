"""The stage commands Nextflow calls: one stage, one slide, one H5 in and a new H5 out."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import ConfigError, H5Error, ReuseConflict
from ..h5 import schema
from ..h5.atomic import atomic_h5, remove_leftover_temps
from ..h5.inspect import describe_mismatches, geometry_mismatches, inspect_h5, made_from_another_slide
from ..h5.locks import SlideLock
from ..outputs import OutputLayout
from ..segmentation.registry import build_segmenter
from ..slides.discovery import find_slides, mpp_override_for
from ..slides.reader import Slide, open_slide
from ..tiling.geometry import plan_geometry
from ..visualize import VisualizeOptions, write_visualizations
from .embed_patches import (
    EmbedOptions,
    check_slide_matches,
    embed_patches_locked,
    missing_encoders,
    read_state,
    start_worker_server,
)
from .segment import read_tissue, segment_slides, write_segmentation_h5
from .tile import TileOptions, clear_patch_images, export_patch_images, geometry_attrs, write_tiled_h5


def _open_one(slide_path: Path, mpp: float | None, mpp_overrides: dict[str, float] | None) -> Slide:
    source = find_slides(slide_path)[0]
    override = mpp if mpp is not None else mpp_override_for(source.stem, mpp_overrides)
    return open_slide(source.path, source.stem, override)


def start_from_previous(previous: Path, target: Path, slide: Slide) -> None:
    """Copy an earlier H5 of this slide to the target (never modifying it); one made from another slide is refused."""
    state = inspect_h5(previous)
    if not state.exists:
        raise H5Error(f"{previous} does not exist")
    other = made_from_another_slide(state, slide.dimensions)
    if other:
        raise ReuseConflict(f"{other}; use --force or another output")
    if Path(previous).resolve() != Path(target).resolve():
        with atomic_h5(target, start_from=previous):
            pass


def run_segment_stage(
    slide_path: Path,
    output: Path,
    segmenter: str = "sam2",
    device: str = "cuda",
    model_dir: Path | None = None,
    mpp: float | None = None,
    mpp_overrides: dict[str, float] | None = None,
    force: bool = False,
    visualize_mask: bool = False,
    visualize_contours: bool = False,
    previous: Path | None = None,
) -> str:
    """``previous``: an earlier H5 of this slide (e.g. the one a pipeline run published) that the output starts
    from, so everything in it that still matches is reused by this and the later stages (ignored with force)."""
    layout = OutputLayout(output)
    with _open_one(slide_path, mpp, mpp_overrides) as slide:
        target = layout.h5(slide.stem)
        with SlideLock(layout.lock(slide.stem), slide=slide.stem, phase="segment"):
            remove_leftover_temps(target)
            if previous is not None and not force:
                start_from_previous(previous, target, slide)
            state = None if force else inspect_h5(target)
            other = made_from_another_slide(state, slide.dimensions) if state is not None else None
            if other:
                raise ReuseConflict(f"{other}; use --force to rebuild it or choose another --output")
            if state is not None and state.has_tissue:
                if state.tissue_attrs.get(schema.TISSUE_SEGMENTER) == segmenter:
                    return f"{slide.stem}: tissue already segmented with {segmenter}, reused {target}"
                if state.is_tiled:
                    raise ReuseConflict(
                        f"{target} was tiled on {state.tissue_attrs.get(schema.TISSUE_SEGMENTER)} tissue, "
                        f"not {segmenter}; use --force to rebuild it or choose another --output"
                    )
            tissue = segment_slides([slide], build_segmenter(segmenter, device, model_dir))[0]
            write_segmentation_h5(target, slide, tissue)
            write_visualizations(
                layout.visualization_dir,
                slide,
                tissue,
                target,
                VisualizeOptions(mask=visualize_mask, contours=visualize_contours),
            )
    regions = len(tissue.contours.regions)
    holes = len(tissue.contours.polygons) - regions
    return (
        f"{slide.stem}: {regions} tissue region(s), {holes} hole(s), "
        f"{100 * tissue.tissue_fraction:.1f}% of the thumbnail -> {target}"
    )


def run_tile_stage(
    slide_path: Path,
    h5_in: Path,
    output: Path,
    options: TileOptions,
    mpp: float | None = None,
    mpp_overrides: dict[str, float] | None = None,
    force: bool = False,
    visualize: VisualizeOptions | None = None,
) -> str:
    layout = OutputLayout(output)
    state = inspect_h5(h5_in)
    if not state.has_tissue:
        raise H5Error(f"{h5_in} has no tissue/ group: run `atlaspatch segment` on the slide first")
    with _open_one(slide_path, mpp, mpp_overrides) as slide:
        other = made_from_another_slide(state, slide.dimensions)
        if other:  # its tissue, and its coords, are another slide's: --force cannot help
            raise ReuseConflict(f"{other}; pass the H5 that `atlaspatch segment` made from this slide")
        target = layout.h5(slide.stem)
        with h5py.File(h5_in, "r") as handle:
            tissue = read_tissue(handle)
        geometry = plan_geometry(slide, options.patch_size, options.step_size, options.target_mag)
        with SlideLock(layout.lock(slide.stem), slide=slide.stem, phase="tile"):
            remove_leftover_temps(target)
            if state.is_tiled and not force:
                mismatches = geometry_mismatches(state, geometry_attrs(geometry, options, tissue.segmenter))
                if mismatches:
                    raise ReuseConflict(
                        f"{h5_in} was tiled with other settings ({describe_mismatches(mismatches)}); "
                        "use --force to re-tile it"
                    )
                if target.resolve() != h5_in.resolve():
                    with atomic_h5(target, start_from=h5_in):
                        pass
                message = f"{slide.stem}: {state.num_patches} patches reused -> {target}"
                if options.save_images:
                    export_patch_images(slide, target, layout.images_dir, options.workers)
            else:
                images_dir = layout.images_dir if options.save_images else None
                clear_patch_images(layout.images_dir, slide.stem)
                result = write_tiled_h5(target, slide, tissue, options, start_from=h5_in, images_dir=images_dir)
                message = f"{slide.stem}: {result.num_patches} patches -> {target}"
                if result.num_patches == 0:
                    message += " (no tissue found)"
            write_visualizations(layout.visualization_dir, slide, tissue, target, visualize or VisualizeOptions())
    return message


def run_embed_patches_stage(
    slide_path: Path,
    h5_in: Path,
    output: Path,
    encoder_names: list[str],
    options: EmbedOptions,
    device: str = "cuda",
    precision: str = "float16",
    model_dir: Path | None = None,
    plugins: tuple[str, ...] = (),
    mpp_overrides: dict[str, float] | None = None,
    force: bool = False,
    for_slide_encoders: list[str] | None = None,
    allow_mag_mismatch: bool = False,
) -> str:
    """``for_slide_encoders``: also compute the features these slide encoders consume (their geometry is checked
    against the H5 first), as encode-slide does."""
    start_worker_server(options.num_workers)  # one stage process per slide (Nextflow): overlap its start-up
    from ..encoders.patch.loading import load_patch_encoder, require_weights
    from ..encoders.slide import slide_encoder_registry
    from .embed_slide import check_geometry

    slide_registry = slide_encoder_registry(plugins)
    registry = slide_registry.patch_encoders
    slide_specs = [slide_registry.get(name) for name in for_slide_encoders or ()]
    wanted = list(dict.fromkeys([*encoder_names, *sorted({spec.patch_encoder for spec in slide_specs})]))
    if not wanted:
        raise ConfigError("name the patch encoders (--encoders) or the slide encoders they are for (--slide-encoders)")
    specs = [registry.get(name) for name in wanted]
    state = read_state(h5_in)
    check_geometry(state, slide_specs, allow_mag_mismatch)
    source = find_slides(slide_path)[0]
    mpp = options.mpp if options.mpp is not None else mpp_override_for(source.stem, mpp_overrides)
    options = EmbedOptions(options.batch_size, options.num_workers, mpp)
    check_slide_matches(source.path, state, mpp)
    todo = missing_encoders(state, specs, force)
    for spec in todo:
        require_weights(spec, model_dir)  # every missing weights file is reported before any work
    layout = OutputLayout(output)
    target = layout.h5(source.stem)
    computed, reused = embed_patches_locked(
        source.path,
        h5_in,
        target,
        layout.lock(source.stem),
        specs,
        lambda spec: load_patch_encoder(spec, device, precision, model_dir),
        options,
        force,
    )
    parts = [f"{name} {rows} patches embedded" for name, rows in computed.items()]
    parts += [f"{name} reused" for name in reused]
    return f"{source.stem}: {', '.join(parts)} -> {target}"


def run_embed_slide_stage(
    h5_in: Path,
    output: Path,
    encoder_names: list[str],
    device: str = "cuda",
    model_dir: Path | None = None,
    plugins: tuple[str, ...] = (),
    force: bool = False,
    allow_mag_mismatch: bool = False,
) -> str:
    from ..encoders.slide import slide_encoder_registry
    from ..encoders.slide.loading import load_slide_encoder, require_slide_weights
    from .embed_slide import check_geometry, embed_slide_locked, feature_dims, missing_embeddings, require_features

    registry = slide_encoder_registry(plugins)
    specs = [registry.get(name) for name in encoder_names]
    dims = feature_dims(specs, registry.patch_encoders)
    state = read_state(h5_in)
    check_geometry(state, specs, allow_mag_mismatch)  # a wrong H5 is refused before any weights are looked for
    require_features(state, specs, dims)
    for spec in missing_embeddings(h5_in, specs, force):
        require_slide_weights(spec, model_dir)  # every missing weights file is reported before any work
    layout = OutputLayout(output)
    stem = Path(h5_in).stem
    result = embed_slide_locked(
        h5_in,
        layout.h5(stem),
        layout.lock(stem),
        specs,
        dims,
        lambda spec: load_slide_encoder(spec, device, model_dir),
        force=force,
        allow_mag_mismatch=allow_mag_mismatch,
    )
    parts = [f"{name} computed" for name in result.computed] + [f"{name} reused" for name in result.reused]
    return f"{stem}: {', '.join(parts)} -> {layout.h5(stem)}"
