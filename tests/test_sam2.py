"""SAM2 segmenter through its production path, on a random-init checkpoint in the upstream file format.

The checkpoint is a test fixture only (random weights, real SAM2.1 hiera-tiny architecture, saved as
``{"model": state_dict}`` like AtlasPatch's model.pth); the masks it gives are meaningless, their shape and
type are not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from atlaspatch.errors import ConfigError, WeightsError  # noqa: E402
from atlaspatch.segmentation import Thumbnail, build_segmenter, read_thumbnail  # noqa: E402
from atlaspatch.segmentation.sam2 import SAM2_WEIGHTS, Sam2Segmenter, build_sam2_tiny  # noqa: E402
from atlaspatch.slides import open_slide  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)


@pytest.fixture(scope="module")
def random_state() -> dict:
    torch.manual_seed(0)
    return build_sam2_tiny().state_dict()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, random_state: dict) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "sam2").mkdir()
    torch.save({"model": random_state}, root / "sam2" / "model.pth")
    return root


@pytest.fixture(scope="module")
def segmenter(model_dir: Path) -> Sam2Segmenter:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(model_dir / "no_hf_home"))
        return Sam2Segmenter.load(device="cpu", model_dir=model_dir)


@pytest.fixture(scope="module")
def cmu_thumbnail(cmu_svs: Path) -> Thumbnail:
    with open_slide(cmu_svs) as slide:
        return read_thumbnail(slide)


@pytest.fixture(scope="module")
def cmu_mask(segmenter: Sam2Segmenter, cmu_thumbnail: Thumbnail) -> np.ndarray:
    (mask,) = segmenter.predict([cmu_thumbnail], [0.499])
    return mask


def check_mask(mask: np.ndarray, thumbnail: Thumbnail) -> None:
    assert mask.shape == thumbnail.image.shape[:2]
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}


def test_loads_from_model_dir_and_segments_real_thumbnail(
    segmenter: Sam2Segmenter, model_dir: Path, cmu_thumbnail: Thumbnail, cmu_mask: np.ndarray
) -> None:
    digest = hashlib.sha256((model_dir / "sam2" / "model.pth").read_bytes()).hexdigest()
    assert segmenter.name == "sam2"
    assert segmenter.weights_id == f"AtlasAnalyticsLab/AtlasPatch/model.pth sha256:{digest}"
    assert str(segmenter.device) == "cpu"
    check_mask(cmu_mask, cmu_thumbnail)


def test_batch_returns_one_mask_per_thumbnail_at_its_size(
    segmenter: Sam2Segmenter, cmu_thumbnail: Thumbnail, cmu_mask: np.ndarray
) -> None:
    small = Thumbnail(image=np.ascontiguousarray(cmu_thumbnail.image[:301, :517]), downsample=(16.0, 16.0))
    masks = segmenter.predict([cmu_thumbnail, small], [0.499, 0.499])
    assert len(masks) == 2
    check_mask(masks[0], cmu_thumbnail)
    check_mask(masks[1], small)
    assert np.mean(masks[0] == cmu_mask) > 0.99  # batching does not change the result beyond float noise
    assert segmenter.predict([], []) == []
    with pytest.raises(ValueError):
        segmenter.predict([small], [])


def test_registry_builds_sam2(model_dir: Path) -> None:
    built = build_segmenter("sam2", device="cpu", model_dir=model_dir)
    assert isinstance(built, Sam2Segmenter)


def test_checkpoint_with_missing_key_fails_loudly(tmp_path: Path, random_state: dict) -> None:
    broken = dict(random_state)
    dropped = next(iter(broken))
    del broken[dropped]
    (tmp_path / "sam2").mkdir()
    torch.save({"model": broken}, tmp_path / "sam2" / "model.pth")
    with pytest.raises(WeightsError, match=r"1 missing key\(s\)") as caught:
        Sam2Segmenter.load(device="cpu", model_dir=tmp_path)
    assert dropped in str(caught.value)


def test_checkpoint_with_unexpected_key_or_wrong_format_fails(tmp_path: Path, random_state: dict) -> None:
    path = tmp_path / "sam2" / "model.pth"
    path.parent.mkdir()
    torch.save({"model": {**random_state, "extra.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="unexpected key"):
        Sam2Segmenter.load(device="cpu", model_dir=tmp_path)
    torch.save(random_state, path)  # a bare state dict is not the upstream format
    with pytest.raises(WeightsError, match="'model' state dict"):
        Sam2Segmenter.load(device="cpu", model_dir=tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        Sam2Segmenter.load(device="cpu", model_dir=tmp_path)


def test_resolved_from_fake_hf_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    source = model_dir / "sam2" / "model.pth"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "hf_cache"
    repo = cache / "models--AtlasAnalyticsLab--AtlasPatch"
    revision = "a" * 40
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True)
    os.link(source, blob)
    snapshot = repo / "snapshots" / revision / "model.pth"
    snapshot.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    loaded = Sam2Segmenter.load(device="cpu", model_dir=tmp_path / "empty_model_dir")
    assert loaded.weights_id == f"AtlasAnalyticsLab/AtlasPatch/model.pth sha256:{digest}"


def test_missing_weights_offline_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        Sam2Segmenter.load(device="cpu", model_dir=tmp_path)
    message = str(caught.value)
    assert "AtlasAnalyticsLab/AtlasPatch" in message and "\n" not in message
    assert "atlaspatch models download sam2 --model-dir DIR" in message


def test_weights_source_constant() -> None:
    assert (SAM2_WEIGHTS.name, SAM2_WEIGHTS.repo_id, SAM2_WEIGHTS.filename) == (
        "sam2",
        "AtlasAnalyticsLab/AtlasPatch",
        "model.pth",
    )


def test_device_handling(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not a device"):
        Sam2Segmenter.load(device="gpu", model_dir=model_dir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fallback = Sam2Segmenter.load(device="cuda", model_dir=model_dir)  # AtlasPatch: warn, then use the CPU
    assert str(fallback.device) == "cpu"


def test_cli_runs_sam2_in_batches_from_the_model_dir(
    model_dir: Path, tmp_path: Path, link_slides, cmu_svs: Path, cmu_pyramid: Path, boxes_tiff: Path
) -> None:
    """The whole command on real slides: weights from --model-dir, two thumbnails per model call."""
    import h5py

    from atlaspatch.weights import sha256_of
    from conftest import run_atlaspatch

    folder = link_slides(cmu_svs, cmu_pyramid, boxes_tiff)
    out = tmp_path / "out"
    result = run_atlaspatch(
        "segment-and-get-coords",
        folder,
        "-o",
        out,
        "--patch-size",
        "512",
        "--target-mag",
        "20",
        "--segmenter",
        "sam2",
        "--model-dir",
        model_dir,
        "--device",
        "cpu",
        "--seg-batch-size",
        "2",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1  # boxes-synthetic has no usable mpp; the other two finish
    assert "boxes-synthetic" in result.stderr and "2 of 3 slide(s) succeeded" in result.stdout
    expected = f"AtlasAnalyticsLab/AtlasPatch/model.pth sha256:{sha256_of(model_dir / 'sam2' / 'model.pth')}"
    for stem in ("CMU-1-Small-Region", "CMU-1-Small-Region.pyramid"):
        with h5py.File(out / "patches" / f"{stem}.h5") as handle:
            assert handle.attrs["segmenter"] == "sam2"
            assert handle["tissue"].attrs["segmenter_weights"] == expected
            assert handle["tissue/mask"].shape == (185, 139)
            assert handle.attrs["num_patches"] == handle["coords"].shape[0]
