"""`atlaspatch segment-and-get-coords` and the stage commands, end to end on the real slides."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from atlaspatch.h5 import schema
from conftest import run_atlaspatch

COMMON = ("--patch-size", "224", "--target-mag", "20", "--segmenter", "otsu", "--device", "cpu")
CONTRACT_ATTRS = {
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "level0_width",
    "level0_height",
    "wsi_path",
    "passport_format",
    "passport_version",
    "creation_date",
    "filename",
    "mpp",
    "magnification",
    "vendor",
    "num_patches",
    "step_size",
    "segmenter",
    "tissue_thresh",
    "fast_mode",
    "white_thresh",
    "black_thresh",
    "atlaspatch_version",
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def coords(path: Path) -> np.ndarray:
    with h5py.File(path) as handle:
        return handle[schema.COORDS][()]


@pytest.fixture
def mixed_dir(link_slides, tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path, tiny_svs: Path, boxes_tiff: Path) -> Path:
    folder = link_slides(cmu_svs, cmu_pyramid, tiny_svs, boxes_tiff)
    (folder / "corrupt.svs").write_bytes(cmu_svs.read_bytes()[:30_000])
    (folder / "case7.svs").symlink_to(tmp_path / "unmounted-share" / "case7.svs")
    return folder


def test_directory_run_with_bad_slides(mixed_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_atlaspatch(
        "segment-and-get-coords",
        mixed_dir,
        "-o",
        out,
        *COMMON,
        "--visualize-grids",
        "--visualize-mask",
        "--visualize-contours",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 3
    assert any("boxes-synthetic" in line and "implausible mpp" in line for line in failed)
    assert any("case7" in line and "unmounted-share/case7.svs, which does not exist" in line for line in failed)
    assert any("corrupt" in line and ("corrupt" in line.split(":", 1)[1] or "OpenSlide" in line) for line in failed)
    assert "3 of 6 slide(s) succeeded, 3 failed" in result.stdout
    patches = out / "patches"
    assert sorted(p.name for p in patches.glob("*.h5")) == [
        "CMU-1-Small-Region.h5",
        "CMU-1-Small-Region.pyramid.h5",
        "tiny-synthetic.h5",
    ]
    assert not list(patches.glob(".*tmp*")) and not list(patches.glob("*.lock"))
    with h5py.File(patches / "CMU-1-Small-Region.h5") as handle:
        assert set(handle.attrs) >= CONTRACT_ATTRS
        assert handle.attrs["num_patches"] == handle[schema.COORDS].shape[0] > 50
        assert handle[schema.COORDS].dtype == np.int32
        assert schema.TISSUE_POINTS in handle and handle[schema.TISSUE].attrs["segmenter"] == "otsu"
    with h5py.File(patches / "tiny-synthetic.h5") as handle:
        assert handle.attrs["num_patches"] == 0 and handle[schema.COORDS].shape == (0, 5)
    assert "no tissue found" in result.stdout
    for suffix in ("", "_mask", "_contours"):
        assert (out / "visualization" / f"CMU-1-Small-Region{suffix}.png").stat().st_size > 10_000


def test_rerun_reuses_and_changed_geometry_is_refused_before_any_work(
    link_slides, tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path
) -> None:
    folder = link_slides(cmu_svs)
    out = tmp_path / "out"
    assert run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON).returncode == 0
    h5 = out / "patches" / "CMU-1-Small-Region.h5"
    digest, mtime = sha(h5), h5.stat().st_mtime_ns

    again = run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON)
    assert again.returncode == 0 and "reused" in again.stdout
    assert (sha(h5), h5.stat().st_mtime_ns) == (digest, mtime)
    filters = ("--white-thresh", "30", "--black-thresh", "10")  # fast mode reads no pixels: these change nothing
    again = run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON, *filters)
    assert again.returncode == 0 and "reused" in again.stdout, again.stderr
    assert (sha(h5), h5.stat().st_mtime_ns) == (digest, mtime)

    (folder / cmu_pyramid.name).symlink_to(cmu_pyramid)  # a new slide: must not be processed either
    changed = run_atlaspatch(
        "segment-and-get-coords",
        folder,
        "-o",
        out,
        "--patch-size",
        "256",
        "--target-mag",
        "20",
        "--segmenter",
        "otsu",
        "--tissue-thresh",
        "0.5",
    )
    assert changed.returncode == 2
    message = changed.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "CMU-1-Small-Region: patch_size 224 (file) != 256 (requested)" in message
    assert "tissue_thresh 0.0 (file) != 0.5 (requested)" in message and "--force" in message
    assert sha(h5) == digest
    assert not (out / "patches" / "CMU-1-Small-Region.pyramid.h5").exists()

    forced = run_atlaspatch(
        "segment-and-get-coords",
        folder,
        "-o",
        out,
        "--patch-size",
        "256",
        "--target-mag",
        "20",
        "--segmenter",
        "otsu",
        "--force",
    )
    assert forced.returncode == 0
    with h5py.File(h5) as handle:
        assert handle.attrs["patch_size"] == 256
        assert (handle[schema.COORDS][:, :2] % 256 == 0).all()


def test_target_above_base_fails_that_slide_only(link_slides, tmp_path: Path, cmu_svs: Path) -> None:
    folder = link_slides(cmu_svs)
    result = run_atlaspatch(
        "segment-and-get-coords",
        folder,
        "-o",
        tmp_path / "out",
        "--patch-size",
        "224",
        "--target-mag",
        "40",
        "--segmenter",
        "otsu",
    )
    assert result.returncode == 1
    assert "target magnification 40x is above the slide's base 20x" in result.stderr
    assert not (tmp_path / "out" / "patches" / "CMU-1-Small-Region.h5").exists()


def test_mpp_csv_override_changes_the_geometry(link_slides, tmp_path: Path, cmu_svs: Path, boxes_tiff: Path) -> None:
    folder = link_slides(cmu_svs, boxes_tiff)
    csv = tmp_path / "mpp.csv"
    csv.write_text("wsi,mpp\nCMU-1-Small-Region.svs,0.25\nboxes-synthetic,0.5\nCMU-1-Smal-Region.svs,0.25\n")
    result = run_atlaspatch("segment-and-get-coords", folder, "-o", tmp_path / "out", *COMMON, "--mpp-csv", csv)
    assert result.returncode == 0, result.stderr
    assert "mpp CSV rows that match no slide of this run: CMU-1-Smal-Region.svs" in result.stderr  # a typo is named
    with h5py.File(tmp_path / "out" / "patches" / "CMU-1-Small-Region.h5") as handle:
        assert handle.attrs["mpp"] == 0.25 and handle.attrs["level0_magnification"] == 40
        assert handle.attrs["patch_size_level0"] == 448  # 224 px at 20x on a (declared) 40x scan
    assert (tmp_path / "out" / "patches" / "boxes-synthetic.h5").exists()


def test_stage_commands_equal_the_combined_command(tmp_path: Path, cmu_dicom: Path) -> None:
    combined = tmp_path / "combined"
    assert run_atlaspatch("segment-and-get-coords", cmu_dicom, "-o", combined, *COMMON).returncode == 0
    staged = tmp_path / "staged"
    seg = run_atlaspatch("segment", cmu_dicom, "-o", tmp_path / "seg", "--segmenter", "otsu", "--device", "cpu")
    assert seg.returncode == 0, seg.stderr
    segmented = tmp_path / "seg" / "patches" / "CMU-1-Small-Region.dicom.h5"
    with h5py.File(segmented) as handle:
        assert schema.TISSUE in handle and schema.COORDS not in handle
    before = sha(segmented)
    tile = run_atlaspatch(
        "tile", cmu_dicom, "--h5", segmented, "-o", staged, "--patch-size", "224", "--target-mag", "20"
    )
    assert tile.returncode == 0, tile.stderr
    assert sha(segmented) == before  # the staged input is never modified
    ours = staged / "patches" / "CMU-1-Small-Region.dicom.h5"
    theirs = combined / "patches" / "CMU-1-Small-Region.dicom.h5"
    assert np.array_equal(coords(ours), coords(theirs))
    with h5py.File(ours) as a, h5py.File(theirs) as b:
        for key in set(a.attrs) - {"creation_date"}:
            assert np.array_equal(a.attrs[key], b.attrs[key]), key

    retile = run_atlaspatch("tile", cmu_dicom, "--h5", ours, "-o", staged, "--patch-size", "512", "--target-mag", "20")
    assert retile.returncode == 2 and "patch_size 224 (file) != 512 (requested)" in retile.stderr


def test_cli_errors_are_one_line(tmp_path: Path, cmu_svs: Path) -> None:
    result = run_atlaspatch("segment-and-get-coords", tmp_path, "-o", tmp_path / "out", *COMMON)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("Error:") and "no slides found" in result.stderr
    bad_device = run_atlaspatch(
        "segment-and-get-coords",
        cmu_svs,
        "-o",
        tmp_path / "out",
        "--patch-size",
        "224",
        "--target-mag",
        "20",
        "--device",
        "gpu7",
    )
    assert bad_device.returncode == 2 and "is not a device" in bad_device.stderr
    unknown = run_atlaspatch(
        "segment-and-get-coords",
        cmu_svs,
        "-o",
        tmp_path / "out",
        "--patch-size",
        "224",
        "--target-mag",
        "20",
        "--segmenter",
        "magic",
        "--device",
        "cpu",
    )
    assert unknown.returncode == 2 and "unknown segmenter 'magic'" in unknown.stderr
    for result in (bad_device, unknown):
        assert "Traceback" not in result.stderr


def test_save_images(tmp_path: Path, cmu_svs: Path) -> None:
    result = run_atlaspatch(
        "segment-and-get-coords",
        cmu_svs,
        "-o",
        tmp_path / "out",
        *COMMON,
        "--save-images",
        "--patch-workers",
        "2",
        "--tissue-thresh",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    h5 = tmp_path / "out" / "patches" / "CMU-1-Small-Region.h5"
    names = {f"CMU-1-Small-Region_x{x}_y{y}.png" for x, y in coords(h5)[:, :2]}
    images = tmp_path / "out" / "images" / "CMU-1-Small-Region"
    assert {p.name for p in images.iterdir()} == names
    for png in list(images.iterdir())[:3]:
        png.unlink()
    again = run_atlaspatch(
        "segment-and-get-coords", cmu_svs, "-o", tmp_path / "out", *COMMON, "--save-images", "--tissue-thresh", "0.5"
    )
    assert again.returncode == 0 and "reused" in again.stdout
    assert {p.name for p in images.iterdir()} == names  # a reused H5 still gets its PNGs


@pytest.mark.parametrize("save_on_retile", [True, False], ids=["retiled-with-images", "images-on-a-later-reuse"])
def test_retiling_never_leaves_stale_patch_images(tmp_path: Path, cmu_svs: Path, save_on_retile: bool) -> None:
    """224-px PNGs, then the slide re-tiled at 256 px (--force), with --save-images then or on a later reuse: only
    the new patches' PNGs, each 256 px, though both lattices share coordinates (e.g. x1792_y1792)."""
    out = tmp_path / "out"
    base = ("segment-and-get-coords", cmu_svs, "-o", out, "--target-mag", "20", "--segmenter", "otsu")
    assert run_atlaspatch(*base, "--patch-size", "224", "--save-images").returncode == 0
    retile = ("--patch-size", "256", "--force", *(("--save-images",) if save_on_retile else ()))
    assert run_atlaspatch(*base, *retile).returncode == 0
    if not save_on_retile:
        again = run_atlaspatch(*base, "--patch-size", "256", "--save-images")
        assert again.returncode == 0 and "reused" in again.stdout
    images = out / "images" / "CMU-1-Small-Region"
    names = {f"CMU-1-Small-Region_x{x}_y{y}.png" for x, y in coords(out / "patches" / "CMU-1-Small-Region.h5")[:, :2]}
    assert {p.name for p in images.iterdir()} == names and "CMU-1-Small-Region_x1792_y1792.png" in names
    assert {Image.open(p).size for p in images.iterdir()} == {(256, 256)}


def test_pipeline_bounded_by_max_open_slides(
    link_slides, tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path, cmu_dicom: Path
) -> None:
    from atlaspatch.pipeline import SegmentTilePipeline, SegmentTileRequest
    from atlaspatch.segmentation.otsu import OtsuSegmenter
    from atlaspatch.slides import find_slides
    from atlaspatch.stages.tile import TileOptions

    folder = link_slides(cmu_svs, cmu_pyramid)
    (folder / "series.dicom").symlink_to(cmu_dicom, target_is_directory=True)
    request = SegmentTileRequest(
        output=tmp_path / "out",
        tile=TileOptions(patch_size=224, target_mag=20),
        segmenter="otsu",
        device="cpu",
        max_open_slides=1,
        seg_batch_size=2,
    )
    done = []
    outcomes = SegmentTilePipeline(request, OtsuSegmenter()).run(find_slides(folder), on_done=done.append)
    assert [o.status for o in outcomes] == ["tiled"] * 3 and len(done) == 3
    assert all(o.num_patches and o.num_patches > 60 for o in outcomes)


def test_unsupported_file_given_directly(tmp_path: Path) -> None:
    notes = tmp_path / "slide.txt"
    notes.write_text("not a slide")
    result = run_atlaspatch("segment-and-get-coords", notes, "-o", tmp_path / "out", *COMMON)
    assert result.returncode == 1
    assert "FAILED slide: slide.txt: unsupported extension .txt" in result.stderr


def test_two_concurrent_runs_on_one_output(link_slides, tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path) -> None:
    import subprocess
    import sys

    folder = link_slides(cmu_svs, cmu_pyramid)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "atlaspatch", "segment-and-get-coords", str(folder), "-o", str(out), *COMMON]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.communicate(timeout=120), run.returncode) for run in runs]
    results = [(code, output) for output, code in results]
    assert [code for code, _ in results] == [0, 0], results
    statuses = "".join(stdout for _, (stdout, _) in results)
    assert statuses.count("tiled") + statuses.count("reused") == 4
    for stem in ("CMU-1-Small-Region", "CMU-1-Small-Region.pyramid"):
        with h5py.File(out / "patches" / f"{stem}.h5") as handle:
            assert handle.attrs["num_patches"] == handle[schema.COORDS].shape[0] > 60
    assert not list((out / "patches").glob(".*")) and not list((out / "patches").glob("*.lock"))


def test_unreadable_existing_h5_fails_that_slide_and_force_rebuilds(
    link_slides, tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path
) -> None:
    folder = link_slides(cmu_svs, cmu_pyramid)
    out = tmp_path / "out"
    assert run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON).returncode == 0
    broken = out / "patches" / "CMU-1-Small-Region.h5"
    broken.write_bytes(broken.read_bytes()[:4096])  # e.g. a copy cut short by a full disk
    result = run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON)
    assert result.returncode == 1
    assert "FAILED CMU-1-Small-Region: existing CMU-1-Small-Region.h5 is unreadable" in result.stderr
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert broken.stat().st_size == 4096  # left for the user to inspect, not silently replaced
    assert "reused" in result.stdout  # the other slide
    assert run_atlaspatch("segment-and-get-coords", folder, "-o", out, *COMMON, "--force").returncode == 0
    assert len(coords(broken)) > 60


def test_missing_sam2_weights_stop_the_run_before_any_work(tmp_path: Path, cmu_svs: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "ATLASPATCH_MODEL_DIR": ""}
    result = run_atlaspatch(
        "segment-and-get-coords",
        cmu_svs,
        "-o",
        tmp_path / "out",
        "--patch-size",
        "224",
        "--target-mag",
        "20",
        "--device",
        "cpu",
        env=env,
    )
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("Error:")
    assert "AtlasAnalyticsLab/AtlasPatch" in error[0] and "atlaspatch models download sam2" in error[0]
    assert not (tmp_path / "out" / "patches").exists()


@pytest.mark.parametrize("command", ["segment-and-get-coords", "encode-slide"])
def test_an_output_that_is_a_file_is_refused_once_up_front(tmp_path: Path, cmu_svs: Path, command: str) -> None:
    taken = tmp_path / "results"
    taken.write_text("a file where the output folder should go")
    extra = ("--slide-encoders", "mean-resnet50") if command == "encode-slide" else ()
    for output in (taken, taken / "sub"):
        result = run_atlaspatch(command, cmu_svs, "-o", output, *COMMON, *extra)
        assert result.returncode == 2
        assert result.stderr.strip() == f"Error: --output {output}: {taken} is a file, not a folder"
    assert taken.read_text() == "a file where the output folder should go"
