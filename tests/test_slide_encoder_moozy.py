"""MOOZY through our adapter against the `moozy` package's own ``run_encoding``, fully offline.

The checkpoint is the real MOOZY stage-2 architecture with random weights, written by the package's own
``save_supervised_checkpoint`` (tests/moozy_checkpoint.py). The per-slide H5 is the real CMU slide segmented and
tiled by our stages (otsu, 224 px at 20x), so coords, ``patch_size_level0`` and ``patch_size`` are ours; its
``features/lunit_vit_small_patch8_dino`` are seeded random float32 rows written where embed-patches writes them
(running the real ViT-S/8 over the 82 patches takes ~20 s on two CPU cores, and MOOZY only sees the numbers).
``run_encoding`` runs in a subprocess so that huggingface_hub reads HF_HUB_OFFLINE / HF_HOME at import, and finds
the checkpoint in an isolated Hugging Face cache exactly as it would find the official file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moozy")

from atlaspatch.encoders.slide.loading import LoadedSlideEncoder, load_slide_encoder  # noqa: E402
from atlaspatch.encoders.slide.registry import slide_encoder_registry  # noqa: E402
from atlaspatch.encoders.slide.spec import SlideEncoderSpec, SlideInputs  # noqa: E402
from atlaspatch.errors import H5Error, WeightsError  # noqa: E402
from atlaspatch.h5 import schema  # noqa: E402
from atlaspatch.stages.commands import run_segment_stage, run_tile_stage  # noqa: E402
from atlaspatch.stages.tile import TileOptions  # noqa: E402
from checkpoints import place_in_hf_cache, place_in_model_dir  # noqa: E402
from moozy_checkpoint import write_moozy_checkpoint  # noqa: E402

LUNIT = "lunit_vit_small_patch8_dino"
REPO_ID, FILENAME = "AtlasAnalyticsLab/MOOZY", "moozy.pt"
HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "ATLASPATCH_MODEL_DIR")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)


@pytest.fixture(scope="session")
def moozy_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random-init moozy.pt (256 MB) for the whole session."""
    return write_moozy_checkpoint(tmp_path_factory.mktemp("moozy_upstream") / FILENAME, seed=0)


@pytest.fixture(scope="module")
def model_dir(moozy_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    place_in_model_dir(root, "moozy", FILENAME, moozy_weights)
    return root


@pytest.fixture(scope="module")
def hf_home(moozy_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds moozy.pt as huggingface_hub lays it out (blob, snapshot, refs/main)."""
    home = tmp_path_factory.mktemp("hf_home")
    place_in_hf_cache(home / "hub", REPO_ID, FILENAME, moozy_weights)
    return home


def cached_blob(hf_home: Path) -> Path:
    blobs = list((hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "blobs").iterdir())
    assert len(blobs) == 1
    return blobs[0]


def write_features(h5: Path, seed: int, name: str = LUNIT, dim: int = 384) -> np.ndarray:
    """Seeded float32 (N, dim) rows at features/<name>, row-aligned with coords, marked complete like ours."""
    with h5py.File(h5, "r+") as handle:
        count = handle[schema.COORDS].shape[0]
        features = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
        group = handle.require_group(schema.FEATURES)
        if name in group:
            del group[name]
        dataset = group.create_dataset(name, data=features)
        dataset.attrs.update({schema.FEATURE_ENCODER: name, schema.FEATURE_DIM: dim, schema.FEATURE_COMPLETE: True})
    return features


@pytest.fixture(scope="module")
def slide_h5(cmu_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CMU slide segmented and tiled by our stages, plus Lunit-shaped features; tests copy it, never change it."""
    output = tmp_path_factory.mktemp("tiled")
    run_segment_stage(cmu_svs, output, segmenter="otsu", device="cpu")
    h5 = output / "patches" / f"{cmu_svs.stem}.h5"
    run_tile_stage(cmu_svs, h5, output, TileOptions(patch_size=224, target_mag=20))
    write_features(h5, seed=0)
    return h5


@pytest.fixture
def h5_copy(slide_h5: Path, tmp_path: Path) -> Path:
    target = tmp_path / "patches" / slide_h5.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(slide_h5, target)
    return target


def inputs_of(h5: Path) -> SlideInputs:
    with h5py.File(h5, "r") as handle:
        features = np.asarray(handle[schema.FEATURES][LUNIT][()], dtype=np.float32)
        coords = np.asarray(handle[schema.COORDS][:, :2], dtype=np.int64)
        attrs = {key: int(handle.attrs[key]) for key in ("patch_size", "patch_size_level0", "target_magnification")}
    return SlideInputs(
        h5, features, coords, attrs["patch_size"], attrs["patch_size_level0"], attrs["target_magnification"]
    )


def spec() -> SlideEncoderSpec:
    return slide_encoder_registry().get("moozy")


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> Iterator[LoadedSlideEncoder]:
    """MOOZY loaded once through the production path from DIR/moozy/moozy.pt."""
    with pytest.MonkeyPatch.context() as patch:
        for var in HF_VARS:
            patch.delenv(var, raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield load_slide_encoder(spec(), "cpu", model_dir)


RUN_ENCODING = """
import json, sys
import h5py
from moozy.encoding import run_encoding
from moozy.hf_hub import ensure_checkpoint
run_encoding([sys.argv[1]], sys.argv[2], mixed_precision=False)
with h5py.File(sys.argv[2], "r") as handle:
    features = handle["features"][()]
print(json.dumps({"checkpoint": ensure_checkpoint(), "dtype": str(features.dtype), "features": features.tolist()}))
"""


def run_encoding_offline(h5: Path, out: Path, hf_home: Path, cpu_only: bool = True) -> tuple[np.ndarray, dict]:
    """The package's own run_encoding([h5], out, mixed_precision=False), with the checkpoint only in the HF cache."""
    env = {key: value for key, value in os.environ.items() if key not in HF_VARS}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)})
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""  # run_encoding takes CUDA whenever it sees it
    result = subprocess.run(
        [sys.executable, "-c", RUN_ENCODING, str(h5), str(out)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return np.asarray(report["features"], dtype=np.float32), report


def test_spec_row() -> None:
    row = spec()
    assert (row.name, row.dim, row.patch_encoder, row.patch_size, row.magnification) == ("moozy", 768, LUNIT, 224, 20)
    assert row.weights is not None and (row.weights.repo_id, row.weights.filename) == (REPO_ID, FILENAME)
    assert not row.weights.gated


def test_matches_the_packages_run_encoding(
    encoder: LoadedSlideEncoder, slide_h5: Path, hf_home: Path, tmp_path: Path
) -> None:
    ours = encoder.encode(inputs_of(slide_h5))
    assert ours.shape == (768,) and ours.dtype == np.float32 and np.isfinite(ours).all()
    assert encoder.precision == "float32" and encoder.device == "cpu"
    assert encoder.weights_source == f"{REPO_ID}/{FILENAME}"

    theirs, report = run_encoding_offline(slide_h5, tmp_path / "case.h5", hf_home)
    assert Path(report["checkpoint"]).resolve() == cached_blob(hf_home).resolve()  # it used our cache entry
    assert report["dtype"] == "float32" and theirs.shape == (768,)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.abs(ours).max() > 0.1  # a real vector (a LayerNorm output), not zeros that trivially match


def test_loads_from_the_offline_hf_cache(
    encoder: LoadedSlideEncoder, slide_h5: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    from_cache = load_slide_encoder(spec(), "cpu", None)
    assert from_cache.weights_source == f"{REPO_ID}/{FILENAME}"
    assert from_cache.weights_sha256 == cached_blob(hf_home).name == encoder.weights_sha256
    inputs = inputs_of(slide_h5)
    np.testing.assert_array_equal(from_cache.encode(inputs), encoder.encode(inputs))


def test_is_deterministic_and_depends_on_the_features(encoder: LoadedSlideEncoder, h5_copy: Path) -> None:
    first = encoder.encode(inputs_of(h5_copy))
    np.testing.assert_array_equal(encoder.encode(inputs_of(h5_copy)), first)

    write_features(h5_copy, seed=1)  # other features, same coords
    other = encoder.encode(inputs_of(h5_copy))
    assert np.abs(other - first).max() > 1e-2

    with h5py.File(h5_copy, "r+") as handle:  # the same rows at other places: MOOZY uses the coords
        dataset = handle[schema.FEATURES][LUNIT]
        dataset[...] = dataset[()][np.random.default_rng(2).permutation(dataset.shape[0])]
    moved = encoder.encode(inputs_of(h5_copy))
    assert np.abs(moved - other).max() > 1e-3


def one_line_error(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a torch checkpoint\n" * 4, "are unreadable"),
        ("truncated", "are unreadable"),
        ({"just": "a state dict"}, "do not fit"),
        ("tiny", "do not fit"),
    ],
)
def test_bad_checkpoint_is_a_one_line_weights_error(
    content: object, problem: str, moozy_weights: Path, tmp_path: Path
) -> None:
    target = tmp_path / "models" / "moozy" / FILENAME
    target.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    elif content == "truncated":
        with moozy_weights.open("rb") as handle:
            target.write_bytes(handle.read(1 << 20))
    elif content == "tiny":  # the right payload keys, but a slide encoder that the (empty) weights do not fill
        config = {"feat_dim": 384, "d_model": 64, "n_layers": 1, "n_heads": 4, "dim_feedforward": 128}
        torch.save({"teacher_slide_encoder": {}, "slide_encoder_config": config}, target)
    else:
        torch.save(content, target)
    with pytest.raises(WeightsError) as caught:
        load_slide_encoder(spec(), "cpu", tmp_path / "models")
    message = one_line_error(caught)
    assert message.startswith(f"moozy weights at {target} {problem}")


def drop_lunit(h5: Path, keep_group: bool) -> None:
    with h5py.File(h5, "r+") as handle:
        del handle[schema.FEATURES][LUNIT]
        if not keep_group:
            del handle[schema.FEATURES]
    if keep_group:
        write_features(h5, seed=3, name="my_resnet18", dim=512)


@pytest.mark.parametrize("keep_group", [True, False], ids=["other-encoder", "no-features"])
def test_h5_without_lunit_features_is_a_one_line_h5_error(
    encoder: LoadedSlideEncoder, h5_copy: Path, keep_group: bool
) -> None:
    inputs = inputs_of(h5_copy)
    drop_lunit(h5_copy, keep_group)
    with pytest.raises(H5Error) as caught:
        encoder.encode(inputs)
    message = one_line_error(caught)
    assert message.startswith(f"moozy cannot read {h5_copy.name}: ValueError:")
    assert f"features/{LUNIT}" in message if keep_group else "'features' node" in message


def test_unreadable_h5_is_a_one_line_h5_error(encoder: LoadedSlideEncoder, h5_copy: Path) -> None:
    inputs = inputs_of(h5_copy)
    h5_copy.write_bytes(b"not hdf5")
    with pytest.raises(H5Error) as caught:
        encoder.encode(inputs)
    assert one_line_error(caught).startswith(f"moozy cannot read {h5_copy.name}: ")


def test_registry_import_loads_neither_torch_nor_moozy() -> None:
    code = "import sys, atlaspatch.encoders.slide.registry; print('torch' in sys.modules, 'moozy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_run_encoding_on_cuda(model_dir: Path, slide_h5: Path, hf_home: Path, tmp_path: Path) -> None:
    """On a GPU both sides run on CUDA (run_encoding picks it itself), with the package's VRAM token cap."""
    loaded = load_slide_encoder(spec(), "cuda", model_dir)
    assert loaded.device.startswith("cuda") and loaded.precision == "float32"
    assert loaded.model.max_tokens > 0
    ours = loaded.encode(inputs_of(slide_h5))
    theirs, _ = run_encoding_offline(slide_h5, tmp_path / "case.h5", hf_home, cpu_only=False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
