"""embed-patches on the real CMU slide: features row-aligned with coords, reuse, crash repair, bad input.

The encoder is the example plugin's ResNet-18 with random weights saved by the test (a real architecture in
the plugin's on-disk format); the features are checked against a direct forward pass on the same patches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from atlaspatch.encoders.patch import patch_encoder_registry  # noqa: E402
from atlaspatch.encoders.patch.loading import load_patch_encoder  # noqa: E402
from atlaspatch.encoders.patch.transforms import to_model_input  # noqa: E402
from atlaspatch.errors import ConfigError, H5Error, SlideError, WeightsError  # noqa: E402
from atlaspatch.h5 import schema  # noqa: E402
from atlaspatch.h5.inspect import complete_features, inspect_h5  # noqa: E402
from atlaspatch.slides import open_slide  # noqa: E402
from atlaspatch.stages.commands import run_embed_patches_stage, run_segment_stage, run_tile_stage  # noqa: E402
from atlaspatch.stages.embed_patches import EmbedOptions  # noqa: E402
from atlaspatch.stages.tile import TileOptions, read_patch  # noqa: E402
from conftest import REPO, run_atlaspatch  # noqa: E402

EXAMPLE_PLUGIN = REPO / "examples" / "feature_plugins" / "my_resnet18.py"
SLOW_PLUGIN = Path(__file__).parent / "plugins" / "slow_resnet18.py"
PLUGINS = (str(EXAMPLE_PLUGIN), str(SLOW_PLUGIN))
ENCODER = "my_resnet18"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init ResNet-18 weights for both plugin encoders, as plain state dicts (the plugin's format)."""
    import timm

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    for name in (ENCODER, "slow_resnet18"):
        (root / name).mkdir()
        torch.save(state, root / name / "resnet18.pth")
    return root


def tile(slide: Path, output: Path) -> Path:
    run_segment_stage(slide, output, segmenter="otsu", device="cpu")
    h5 = output / "patches" / f"{slide.stem}.h5"
    run_tile_stage(slide, h5, output, TileOptions(patch_size=224, target_mag=20))
    return h5


@pytest.fixture(scope="module")
def tiled(cmu_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled CMU H5 (otsu, 224 px at 20×); tests copy it, never change it."""
    return tile(cmu_svs, tmp_path_factory.mktemp("tiled"))


@pytest.fixture
def work(tiled: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out" / "patches" / tiled.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(tiled, target)
    return target


def embed(slide: Path, h5: Path, model_dir: Path, encoders: str = ENCODER, **kwargs: object) -> str:
    options = EmbedOptions(batch_size=int(kwargs.pop("batch_size", 16)), num_workers=int(kwargs.pop("workers", 2)))
    return run_embed_patches_stage(
        slide,
        h5,
        Path(kwargs.pop("output", h5.parent.parent)),
        encoders.split(","),
        options,
        device="cpu",
        precision=str(kwargs.pop("precision", "float32")),
        model_dir=model_dir,
        plugins=PLUGINS,
        force=bool(kwargs.pop("force", False)),
    )


@pytest.fixture(scope="module")
def expected(cmu_svs: Path, tiled: Path, model_dir: Path) -> np.ndarray:
    """Features computed the plain way: each coords row read on its own, normalised float32 NCHW in the default
    memory layout (the stage hands over uint8 and runs the CNN channels-last), one forward pass per 8 patches."""
    spec = patch_encoder_registry(PLUGINS).get(ENCODER)
    assert spec.channels_last
    encoder = load_patch_encoder(dataclasses.replace(spec, channels_last=False), "cpu", "float32", model_dir)
    with h5py.File(tiled, "r") as handle:
        coords = handle[schema.COORDS][...]
    with open_slide(cmu_svs) as slide:
        patches = [read_patch(slide, row, 224) for row in coords]
    return np.concatenate(
        [encoder.embed(to_model_input(patches[i : i + 8], spec.preprocess)).numpy() for i in range(0, len(patches), 8)]
    )


def test_uint8_batches_normalised_on_the_device_equal_the_float_input(cmu_svs: Path, model_dir: Path) -> None:
    from atlaspatch.encoders.patch.transforms import to_uint8_batch

    spec = patch_encoder_registry(PLUGINS).get(ENCODER)
    with open_slide(cmu_svs) as slide:
        patches = [read_patch(slide, (x, 1000, 224, 224, 0), 224) for x in (0, 600, 1200, 1800)]
    uint8 = to_uint8_batch(patches, spec.preprocess)
    assert uint8.dtype == torch.uint8 and uint8.shape == (4, 224, 224, 3)
    floats = to_model_input(patches, spec.preprocess)
    assert floats.is_contiguous() and float(floats.std()) > 0.1
    channels_last = load_patch_encoder(spec, "cpu", "float32", model_dir)
    contiguous = load_patch_encoder(dataclasses.replace(spec, channels_last=False), "cpu", "float32", model_dir)
    first_conv = next(p for p in channels_last.model.parameters() if p.ndim == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last) and not first_conv.is_contiguous()
    reference = contiguous.embed(floats)
    assert torch.equal(contiguous.embed(uint8), reference)
    torch.testing.assert_close(channels_last.embed(uint8), reference, rtol=1e-4, atol=1e-5)
    assert float(reference.abs().max()) > 0.01


def read_features(h5: Path, name: str = ENCODER) -> tuple[np.ndarray, dict]:
    with h5py.File(h5, "r") as handle:
        dataset = handle[schema.FEATURES][name]
        return dataset[...], dict(dataset.attrs)


def test_features_are_row_aligned_with_coords(cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray) -> None:
    message = embed(cmu_svs, work, model_dir)
    assert f"{ENCODER} {len(expected)} patches embedded" in message
    features, attrs = read_features(work)
    with h5py.File(work, "r") as handle:
        assert features.shape == (handle[schema.COORDS].shape[0], 512) == (handle.attrs["num_patches"], 512)
        assert list(handle[schema.FEATURES]) == [ENCODER]  # the temp dataset is gone
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    assert attrs["encoder"] == ENCODER and attrs["dim"] == 512 and attrs["num_patches"] == len(expected)
    assert attrs["precision"] == "float32" and bool(attrs["complete"])
    assert attrs["weights_sha256"] == sha256(model_dir / ENCODER / "resnet18.pth")
    assert attrs["weights_source"] == "my-lab/resnet18-histo/resnet18.pth"


def test_main_process_reader_gives_the_same_features(
    cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray
) -> None:
    embed(cmu_svs, work, model_dir, workers=0, batch_size=5)
    np.testing.assert_allclose(read_features(work)[0], expected, rtol=1e-4, atol=1e-4)


def test_rerun_is_a_no_op(cmu_svs: Path, work: Path, model_dir: Path) -> None:
    embed(cmu_svs, work, model_dir)
    before = (work.stat().st_ino, work.stat().st_mtime_ns, sha256(work))
    message = embed(cmu_svs, work, model_dir)
    assert f"{ENCODER} reused" in message
    assert (work.stat().st_ino, work.stat().st_mtime_ns, sha256(work)) == before


def test_force_recomputes(cmu_svs: Path, work: Path, model_dir: Path) -> None:
    embed(cmu_svs, work, model_dir)
    first = read_features(work)[1]["creation_date"]
    assert "patches embedded" in embed(cmu_svs, work, model_dir, force=True)
    assert inspect_h5(work).feature_attrs[ENCODER]["creation_date"] >= first


def test_staged_input_is_never_modified(cmu_svs: Path, tiled: Path, tmp_path: Path, model_dir: Path) -> None:
    staged = tmp_path / "staged.h5"
    shutil.copyfile(tiled, staged)
    digest = sha256(staged)
    embed(cmu_svs, staged, model_dir, output=tmp_path / "task")
    assert sha256(staged) == digest
    assert read_features(tmp_path / "task" / "patches" / f"{cmu_svs.stem}.h5")[0].shape[1] == 512


def test_two_encoders_in_one_call(cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray) -> None:
    embed(cmu_svs, work, model_dir, encoders=f"{ENCODER},slow_resnet18")
    state = inspect_h5(work)
    assert complete_features(state, ENCODER, 512) and complete_features(state, "slow_resnet18", 512)
    np.testing.assert_allclose(read_features(work, "slow_resnet18")[0], expected, rtol=1e-4, atol=1e-4)


def test_writer_interrupted_in_process_leaves_the_h5_untouched(
    cmu_svs: Path, work: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, expected: np.ndarray
) -> None:
    from atlaspatch.encoders.patch.loading import LoadedPatchEncoder

    digest = sha256(work)
    real_embed = LoadedPatchEncoder.embed
    calls = {"n": 0}

    def failing_embed(self, images):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_embed(self, images)

    monkeypatch.setattr(LoadedPatchEncoder, "embed", failing_embed)
    with pytest.raises(KeyboardInterrupt):
        embed(cmu_svs, work, model_dir)
    assert sha256(work) == digest
    assert not list(work.parent.glob(".*.tmp.*"))
    monkeypatch.setattr(LoadedPatchEncoder, "embed", real_embed)
    embed(cmu_svs, work, model_dir)
    np.testing.assert_allclose(read_features(work)[0], expected, rtol=1e-4, atol=1e-4)


def test_killed_process_is_repaired_by_the_next_run(
    cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray
) -> None:
    """SIGKILL while features are being written: the H5 keeps no trace but a temp file the next run removes."""
    digest = sha256(work)
    command = [sys.executable, "-m", "atlaspatch", "embed-patches", "--slide", str(cmu_svs), "--h5", str(work)]
    command += ["-o", str(work.parent.parent), "--encoders", "slow_resnet18", "--feature-plugin", str(SLOW_PLUGIN)]
    command += ["--model-dir", str(model_dir), "--feature-device", "cpu", "--feature-batch-size", "8"]
    env = {**os.environ, "ATLASPATCH_TEST_BATCH_SLEEP": "0.5"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(work.parent.glob(f".{work.name}.tmp.*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(2.0)  # a few batches into the temp dataset
    helpers = descendants(process.pid)  # the fork server and the DataLoader workers
    assert helpers, "the stage should be reading with worker processes"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)], "workers outlived the killed stage"
    assert list(work.parent.glob(f".{work.name}.tmp.*")), "the killed run should have left its temp file"
    assert sha256(work) == digest
    assert "slow_resnet18" not in inspect_h5(work).features
    (work.parent / f"{work.stem}.lock").unlink(missing_ok=True)  # a dead pid's lock would be taken over anyway
    assert "patches embedded" in embed(cmu_svs, work, model_dir, encoders="slow_resnet18")
    assert not list(work.parent.glob(f".{work.name}.tmp.*"))
    np.testing.assert_allclose(read_features(work, "slow_resnet18")[0], expected, rtol=1e-4, atol=1e-4)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("damage", ["short_rows", "temp_dataset", "not_complete"])
def test_partial_dataset_is_rebuilt(
    cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray, damage: str
) -> None:
    with h5py.File(work, "a") as handle:
        group = handle.require_group(schema.FEATURES)
        if damage == "short_rows":  # AtlasPatch's trap: a dataset from a crash with too few rows
            group.create_dataset(ENCODER, data=np.zeros((10, 512), np.float32))
        elif damage == "temp_dataset":
            group.create_dataset(schema.TEMP_FEATURE_PREFIX + ENCODER, data=np.zeros((10, 512), np.float32))
        else:  # ours, all rows, but never marked complete
            dataset = group.create_dataset(ENCODER, data=np.zeros((len(expected), 512), np.float32))
            dataset.attrs["encoder"] = ENCODER
    assert not complete_features(inspect_h5(work), ENCODER, 512)
    assert "patches embedded" in embed(cmu_svs, work, model_dir)
    with h5py.File(work, "r") as handle:
        assert sorted(handle[schema.FEATURES]) == [ENCODER]
    np.testing.assert_allclose(read_features(work)[0], expected, rtol=1e-4, atol=1e-4)


def test_atlaspatch_features_without_attrs_are_reused(cmu_svs: Path, work: Path, model_dir: Path) -> None:
    with h5py.File(work, "a") as handle:
        rows = handle[schema.COORDS].shape[0]
        handle.require_group(schema.FEATURES).create_dataset(ENCODER, data=np.ones((rows, 512), np.float32))
    assert f"{ENCODER} reused" in embed(cmu_svs, work, model_dir)
    assert np.all(read_features(work)[0] == 1.0)


def test_bfloat16_and_float16_on_cpu(cmu_svs: Path, work: Path, model_dir: Path, expected: np.ndarray) -> None:
    embed(cmu_svs, work, model_dir, precision="bfloat16")
    features, attrs = read_features(work)
    assert attrs["precision"] == "bfloat16" and features.dtype == np.float32
    correlation = np.corrcoef(features.ravel(), expected.ravel())[0, 1]
    assert correlation > 0.99
    embed(cmu_svs, work, model_dir, precision="float16", force=True)
    assert read_features(work)[1]["precision"] == "float32"  # float16 on CPU falls back


def test_slide_without_patches_gets_an_empty_complete_dataset(tiny_svs: Path, tmp_path: Path, model_dir: Path) -> None:
    h5 = tile(tiny_svs, tmp_path)
    assert "0 patches embedded" in embed(tiny_svs, h5, model_dir)
    features, attrs = read_features(h5)
    assert features.shape == (0, 512) and bool(attrs["complete"])


def test_bad_requests_fail_before_any_work(
    cmu_svs: Path, tiny_svs: Path, work: Path, tmp_path: Path, model_dir: Path
) -> None:
    digest = sha256(work)
    with pytest.raises(WeightsError, match=r"pre-fetch with `atlaspatch models download my_resnet18"):
        embed(cmu_svs, work, tmp_path / "no_models")
    with pytest.raises(ConfigError, match="unknown patch encoder 'nope'"):
        embed(cmu_svs, work, model_dir, encoders="nope")
    with pytest.raises(SlideError, match="was made from a 2220x2967 px slide, not this 16x16 px one"):
        embed(tiny_svs, work, model_dir)
    assert sha256(work) == digest
    segmented_only = tmp_path / "seg"
    run_segment_stage(cmu_svs, segmented_only, segmenter="otsu", device="cpu")
    with pytest.raises(H5Error, match="run `atlaspatch tile`"):
        embed(cmu_svs, segmented_only / "patches" / f"{cmu_svs.stem}.h5", model_dir)


def test_cli_one_line_errors(cmu_svs: Path, work: Path, tmp_path: Path, model_dir: Path) -> None:
    base = ["embed-patches", "--slide", cmu_svs, "--h5", work, "-o", work.parent.parent, "--feature-device", "cpu"]
    missing = run_atlaspatch(*base, "--encoders", ENCODER, "--feature-plugin", EXAMPLE_PLUGIN)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "my-lab/resnet18-histo/resnet18.pth" in missing.stderr
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = run_atlaspatch(*base, "--encoders", ENCODER, "--feature-plugin", broken)
    assert result.returncode == 2 and "broken_plugin.py failed to import: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr
    ok = run_atlaspatch(
        *base, "--encoders", ENCODER, "--feature-plugin", EXAMPLE_PLUGIN, "--model-dir", model_dir,
        "--feature-num-workers", "1",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert f"{ENCODER} 82 patches embedded" in ok.stdout or "patches embedded" in ok.stdout


def test_registered_encoder_end_to_end_from_the_offline_hf_cache(cmu_svs: Path, work: Path, tmp_path: Path) -> None:
    """MOOZY's patch encoder through the real CLI: weights only in a Hugging Face cache, HF_HUB_OFFLINE=1."""
    from checkpoints import place_in_hf_cache, save_checkpoint

    spec = patch_encoder_registry().get("lunit_vit_small_patch8_dino")
    torch.manual_seed(1)
    weights = save_checkpoint(spec.architecture().state_dict(), tmp_path / "upstream" / spec.weights.filename)
    cache = tmp_path / "hf_home" / "hub"
    place_in_hf_cache(cache, spec.weights.repo_id, spec.weights.filename, weights)
    result = run_atlaspatch(
        "embed-patches", "--slide", cmu_svs, "--h5", work, "-o", work.parent.parent, "--encoders", spec.name,
        "--feature-device", "cpu", "--feature-num-workers", "2", "--feature-batch-size", "16",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    features, attrs = read_features(work, spec.name)
    with h5py.File(work, "r") as handle:
        assert features.shape == (handle[schema.COORDS].shape[0], 384)
    assert np.isfinite(features).all() and features.std(axis=0).mean() > 0  # patches differ, so rows differ
    assert attrs["weights_sha256"] == sha256(weights)
    assert attrs["weights_source"] == f"{spec.weights.repo_id}/{spec.weights.filename}"
    assert attrs["input_size"] == 224 and attrs["precision"] == "float32"
