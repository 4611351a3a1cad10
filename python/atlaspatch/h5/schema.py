"""Every dataset, group and attribute name of the per-slide H5, in one place.

The layout is AtlasPatch's (so AtlasPatch/MOOZY readers read ours and ours reads theirs), plus provenance.
"""

from __future__ import annotations

COORDS = "coords"  # int32 (N, 5): x, y, read_w, read_h, level — x, y are the level-0 top-left corner
COORDS_COLUMNS = 5
PASSPORTS = "passports"  # S160 (N,): AtlasPatch's per-patch identity strings
FEATURES = "features"  # features/<patch_encoder>: float32 (N, D)
SLIDE_FEATURES = "slide_features"  # slide_features/<slide_encoder>: float32 (D,)
TISSUE = "tissue"

TISSUE_MASK = f"{TISSUE}/mask"  # uint8 (h, w) thumbnail mask, 1 = tissue
TISSUE_POINTS = f"{TISSUE}/points"  # float32 (P, 2) contour vertices in level-0 pixels (x, y)
TISSUE_OFFSETS = f"{TISSUE}/offsets"  # int64 (K + 1,) contour k is points[offsets[k]:offsets[k + 1]]
TISSUE_PARENTS = f"{TISSUE}/parents"  # int32 (K,) -1 for a tissue region, else the index of the region it holes

PASSPORT_FORMAT = "{stem}__x{x}_y{y}_rw{rw}_rh{rh}_lv{lv}_mag{mag}_tmag{tmag}_total{total}"
PASSPORT_VERSION = 2
PASSPORT_DTYPE = "S160"

# File attributes that decide whether an existing H5 can serve a request.
GEOMETRY_FIELDS = (
    "patch_size",
    "step_size",
    "target_magnification",
    "patch_size_level0",
    "segmenter",
    "tissue_thresh",
    "fast_mode",
    "white_thresh",
    "black_thresh",
)
# The pixel filters: they decide nothing in fast mode, which keeps patches by the tissue mask alone.
PIXEL_FILTER_FIELDS = ("white_thresh", "black_thresh")
# Fields AtlasPatch itself writes; the only ones a file from AtlasPatch can be checked on.
ATLASPATCH_GEOMETRY_FIELDS = ("patch_size", "step_size", "target_magnification", "patch_size_level0")

# Attributes of features/<encoder>. AtlasPatch writes none; a dataset of ours without FEATURE_COMPLETE was never
# finished. Datasets named TEMP_FEATURE_PREFIX + name are work in progress (AtlasPatch uses the same prefix).
FEATURE_ENCODER = "encoder"
FEATURE_DIM = "dim"
FEATURE_PRECISION = "precision"
FEATURE_WEIGHTS = "weights_sha256"
FEATURE_COMPLETE = "complete"
TEMP_FEATURE_PREFIX = "__tmp_"

NUM_PATCHES = "num_patches"  # written last: a file without it was never finished
TOOL_VERSION = "atlaspatch_version"

# Attributes of the tissue group: which segmentation produced it.
TISSUE_SEGMENTER = "segmenter"
TISSUE_WEIGHTS = "segmenter_weights"
TISSUE_DOWNSAMPLE = "downsample"  # (x, y) level-0 pixels per mask pixel
TISSUE_MAGNIFICATION = "thumbnail_magnification"

# Attributes of slide_features/<encoder>: AtlasPatch's six, then the fingerprint of the features it was computed
# from (sha256 over the features dataset's shape and float32 bytes) and provenance.
SLIDE_ENCODER_NAME = "encoder_name"
SLIDE_SOURCE_PATCH_ENCODER = "source_patch_encoder"
SLIDE_SOURCE_FEATURES = "source_features_sha256"
SLIDE_REUSE_FIELDS = ("num_patches", "patch_size", "patch_size_level0", "target_magnification")
