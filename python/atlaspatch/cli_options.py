"""Option declarations shared by the commands, with the seed page's names, types and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SEG = "Segmentation"
TILE = "Tiling"
OUT = "Outputs"
FEAT = "Patch features"
RUN = "Run"

Output = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="Output root: patches/<stem>.h5, images/, visualization/.", rich_help_panel=OUT
    ),
]
PatchSize = Annotated[
    int, typer.Option("--patch-size", help="Patch size in pixels at the target magnification.", rich_help_panel=TILE)
]
StepSize = Annotated[
    int | None,
    typer.Option(
        "--step-size",
        help="Stride in pixels at the target magnification [default: same as --patch-size].",
        rich_help_panel=TILE,
    ),
]
TargetMag = Annotated[
    int, typer.Option("--target-mag", min=1, max=120, help="Target magnification (e.g. 20).", rich_help_panel=TILE)
]
Device = Annotated[
    str, typer.Option("--device", help="Device for tissue segmentation (cpu, cuda, cuda:N).", rich_help_panel=SEG)
]
Segmenter = Annotated[
    str,
    typer.Option(
        "--segmenter",
        help="Tissue segmenter: sam2 (AtlasPatch's fine-tuned SAM2) or otsu (classical, no weights).",
        rich_help_panel=SEG,
    ),
]
ModelDir = Annotated[
    Path | None,
    typer.Option(
        "--model-dir",
        envvar="ATLASPATCH_MODEL_DIR",
        help="Directory of pre-fetched weights (DIR/<model>/<file>).",
        rich_help_panel=RUN,
    ),
]
SegBatchSize = Annotated[
    int, typer.Option("--seg-batch-size", min=1, help="Thumbnails segmented per model call.", rich_help_panel=SEG)
]
TissueThresh = Annotated[
    float,
    typer.Option(
        "--tissue-thresh",
        min=0.0,
        max=1.0,
        help="Minimum fraction of a patch's area that is tissue for it to be "
        "kept (a patch without tissue is never kept).",
        rich_help_panel=TILE,
    ),
]
WhiteThresh = Annotated[
    int,
    typer.Option(
        "--white-thresh", min=1, help="Saturation threshold of the white filter (--no-fast-mode).", rich_help_panel=TILE
    ),
]
BlackThresh = Annotated[
    int,
    typer.Option(
        "--black-thresh", min=1, help="RGB threshold of the black filter (--no-fast-mode).", rich_help_panel=TILE
    ),
]
WriteBatch = Annotated[
    int, typer.Option("--write-batch", min=1, help="Coordinate rows buffered per H5 write.", rich_help_panel=TILE)
]
PatchWorkers = Annotated[
    int | None,
    typer.Option(
        "--patch-workers",
        min=1,
        help="Threads for patch reads and PNG export [default: CPU count].",
        rich_help_panel=TILE,
    ),
]
MaxOpenSlides = Annotated[
    int, typer.Option("--max-open-slides", min=1, help="Most slides kept open at once.", rich_help_panel=RUN)
]
FastMode = Annotated[
    bool,
    typer.Option(
        "--fast-mode/--no-fast-mode",
        help="--no-fast-mode adds the per-patch white/black filtering pass.",
        rich_help_panel=TILE,
    ),
]
SaveImages = Annotated[
    bool, typer.Option("--save-images", help="Save patches as PNGs under images/<stem>/.", rich_help_panel=OUT)
]
VisualizeGrids = Annotated[
    bool, typer.Option("--visualize-grids", help="Save patch-grid overlays under visualization/.", rich_help_panel=OUT)
]
VisualizeMask = Annotated[
    bool, typer.Option("--visualize-mask", help="Save tissue-mask overlays under visualization/.", rich_help_panel=OUT)
]
VisualizeContours = Annotated[
    bool, typer.Option("--visualize-contours", help="Save contour overlays under visualization/.", rich_help_panel=OUT)
]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing/--force",
        help="Reuse existing outputs whose saved settings match; --force rebuilds them.",
        rich_help_panel=RUN,
    ),
]
Recursive = Annotated[
    bool, typer.Option("--recursive", help="Recurse into subdirectories of WSI_PATH.", rich_help_panel=RUN)
]
MppCsv = Annotated[
    Path | None,
    typer.Option(
        "--mpp-csv",
        exists=True,
        dir_okay=False,
        help="CSV with columns wsi,mpp overriding slide mpp (matched by stem).",
        rich_help_panel=RUN,
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=RUN)]

FeatureDevice = Annotated[
    str,
    typer.Option("--feature-device", help="Device for patch features (cpu, cuda, cuda:N).", rich_help_panel=FEAT),
]
FeatureBatchSize = Annotated[
    int, typer.Option("--feature-batch-size", min=1, help="Patches per model call.", rich_help_panel=FEAT)
]
FeatureNumWorkers = Annotated[
    int,
    typer.Option(
        "--feature-num-workers",
        min=0,
        help="DataLoader workers reading and preprocessing patches (0: the main process).",
        rich_help_panel=FEAT,
    ),
]
FeaturePrecision = Annotated[
    str,
    typer.Option(
        "--feature-precision",
        help="float32, float16 or bfloat16 (float16 on CPU falls back to float32).",
        rich_help_panel=FEAT,
    ),
]
FeaturePlugin = Annotated[
    list[Path] | None,
    typer.Option(
        "--feature-plugin",
        help="Python file or module registering custom patch encoders (repeatable; see docs/feature-plugins.md).",
        rich_help_panel=FEAT,
    ),
]

SLIDE = "Slide encoders"

SlideEncoders = Annotated[
    str,
    typer.Option(
        "--slide-encoders",
        help="Slide encoders, comma- or space-separated: titan, prism, moozy, mean-<patch encoder>.",
        rich_help_panel=SLIDE,
    ),
]
SlideDevice = Annotated[
    str,
    typer.Option(
        "--device", help="Device for tissue segmentation and slide encoders (cpu, cuda, cuda:N).", rich_help_panel=SLIDE
    ),
]
OptionalFeatureDevice = Annotated[
    str | None,
    typer.Option(
        "--feature-device",
        help="Device for the upstream patch features [default: same as --device].",
        rich_help_panel=FEAT,
    ),
]
AllowMagMismatch = Annotated[
    bool,
    typer.Option(
        "--allow-mag-mismatch",
        help="Embed patches taken at a --target-mag other than the one the slide encoders were trained at.",
        rich_help_panel=SLIDE,
    ),
]
