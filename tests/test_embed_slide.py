"""The embed-slide stage (`atlaspatch embed-slide`, stage 4) on a real tiled H5 of the CMU slide.

Features are written straight into the H5 here (random values, the attrs embed-patches writes), so these tests
need no patch model; `mean-resnet50` needs no weights and is checked against numpy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlaspatch.h5 import schema
from conftest import run_atlaspatch

ENCODER = "mean-resnet50"
GEOMETRY = ("--target-mag", "20", "--segmenter", "otsu", "--device", "cpu")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_features(h5: Path, name: str, dim: int, seed: int = 0, complete: bool = True) -> np.ndarray:
    with h5py.File(h5, "r+") as handle:
        n = handle[schema.COORDS].shape[0]
        values = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
        group = handle.require_group(schema.FEATURES)
        if name in group:
            del group[name]
        dataset = group.create_dataset(name, data=values)
        dataset.attrs.update({"encoder": name, "dim": dim, "num_patches": n, "complete": complete})
    return values


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path) -> dict[int, Path]:
    """The CMU slide tiled at 224 and 256 px (20×) by the real CLI."""
    root = tmp_path_factory.mktemp("embed-slide")
    made = {}
    for size in (224, 256):
        result = run_atlaspatch("segment-and-get-coords", cmu_svs, "-o", root / str(size), "--patch-size", str(size),
                                *GEOMETRY)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        made[size] = root / str(size) / "patches" / f"{cmu_svs.stem}.h5"
    return made


@pytest.fixture
def h5_with_features(tiled: dict[int, Path], tmp_path: Path) -> tuple[Path, np.ndarray]:
    h5 = tmp_path / "in" / tiled[224].name
    h5.parent.mkdir()
    shutil.copyfile(tiled[224], h5)
    return h5, add_features(h5, "resnet50", 1024)


def embed_slide(h5: Path, out: Path, *extra: str) -> object:
    return run_atlaspatch("embed-slide", "--h5", h5, "--slide-encoders", ENCODER, "-o", out, "--device", "cpu",
                          *extra)  # fmt: skip


def test_embedding_is_the_mean_and_the_input_is_untouched(h5_with_features, tmp_path: Path) -> None:
    h5, features = h5_with_features
    before = digest(h5)
    result = embed_slide(h5, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{ENCODER} computed" in result.stdout
    assert digest(h5) == before  # the staged input is never modified
    with h5py.File(tmp_path / "out" / "patches" / h5.name, "r") as handle:
        embedding = handle[f"slide_features/{ENCODER}"]
        assert embedding.shape == (1024,) and embedding.dtype == np.float32
        assert np.allclose(embedding[()], features.astype(np.float64).mean(axis=0), atol=1e-7)
        assert np.allclose(embedding[()], features.mean(axis=0), atol=1e-5)
        attrs = dict(embedding.attrs)
        assert attrs["encoder_name"] == ENCODER and attrs["source_patch_encoder"] == "resnet50"
        assert attrs["num_patches"] == features.shape[0] == handle.attrs["num_patches"]
        assert attrs["patch_size"] == 224 and attrs["target_magnification"] == 20
        assert attrs["patch_size_level0"] == handle.attrs["patch_size_level0"]
        assert attrs["weights_source"] == "none" and len(attrs["source_features_sha256"]) == 64
        assert np.array_equal(handle["features/resnet50"][()], features)  # everything else carried over
    assert sorted(p.name for p in (tmp_path / "out" / "patches").iterdir()) == [h5.name]


def test_a_second_run_reuses_and_force_recomputes(h5_with_features, tmp_path: Path) -> None:
    h5, _ = h5_with_features
    out = tmp_path / "out" / "patches" / h5.name
    assert embed_slide(h5, tmp_path / "out").returncode == 0
    stamp = (out.stat().st_mtime_ns, digest(out))
    result = embed_slide(out, tmp_path / "out")  # in place, as encode-slide does
    assert result.returncode == 0 and f"{ENCODER} reused" in result.stdout, result.stderr
    assert (out.stat().st_mtime_ns, digest(out)) == stamp
    result = embed_slide(out, tmp_path / "out", "--force")
    assert result.returncode == 0 and f"{ENCODER} computed" in result.stdout, result.stderr
    assert digest(out) != stamp[1]


def test_an_embedding_without_fingerprint_is_recomputed(h5_with_features, tmp_path: Path) -> None:
    """As AtlasPatch writes them: the six attrs match, but nothing says which features it came from."""
    h5, features = h5_with_features
    with h5py.File(h5, "r+") as handle:
        n = features.shape[0]
        stale = handle.create_dataset(f"slide_features/{ENCODER}", data=np.zeros(1024, np.float32))
        stale.attrs.update({"encoder_name": ENCODER, "source_patch_encoder": "resnet50", "num_patches": n,
                            "patch_size": 224, "patch_size_level0": handle.attrs["patch_size_level0"],
                            "target_magnification": 20})  # fmt: skip
    result = embed_slide(h5, tmp_path / "out")
    assert result.returncode == 0 and f"{ENCODER} computed" in result.stdout, result.stderr
    with h5py.File(tmp_path / "out" / "patches" / h5.name, "r") as handle:
        assert np.allclose(handle[f"slide_features/{ENCODER}"][()], features.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "incomplete", "short"])
def test_missing_or_partial_features_are_one_line_errors(h5_with_features, tmp_path: Path, damage: str) -> None:
    h5, _ = h5_with_features
    with h5py.File(h5, "r+") as handle:
        if damage == "missing":
            del handle["features/resnet50"]
        elif damage == "incomplete":
            handle["features/resnet50"].attrs["complete"] = False
        else:
            values = handle["features/resnet50"][:-3]
            del handle["features/resnet50"]
            handle.create_dataset("features/resnet50", data=values)
    result = embed_slide(h5, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "lacks complete features/resnet50: run `atlaspatch embed-patches`" in result.stderr
    assert not (tmp_path / "out" / "patches" / h5.name).exists()


def test_an_encoder_with_other_geometry_is_refused(tiled: dict[int, Path], tmp_path: Path) -> None:
    h5 = tmp_path / tiled[256].name
    shutil.copyfile(tiled[256], h5)
    add_features(h5, "lunit_vit_small_patch8_dino", 384)
    result = run_atlaspatch("embed-slide", "--h5", h5, "--slide-encoders", "moozy", "-o", tmp_path / "out",
                            "--device", "cpu")  # fmt: skip
    assert result.returncode == 2
    assert "moozy needs 224 px @ 20x patches but" in result.stderr and "256 px" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_an_interrupted_write_leaves_the_target_as_it_was(h5_with_features, tmp_path: Path, monkeypatch) -> None:
    """A crash inside the H5 write: the previous target is intact, and the next run removes the temp file."""
    from atlaspatch.stages import embed_slide as stage
    from atlaspatch.stages.commands import run_embed_slide_stage

    h5, _ = h5_with_features
    out = tmp_path / "out" / "patches" / h5.name
    run_embed_slide_stage(h5, tmp_path / "out", [ENCODER], device="cpu")
    before = digest(out)

    def crash(handle: h5py.File, embeddings: object) -> None:
        handle.require_group("slide_features").create_dataset("half", data=np.zeros(3))
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "write_embeddings", crash)
    with pytest.raises(KeyboardInterrupt):
        run_embed_slide_stage(out, tmp_path / "out", [ENCODER], device="cpu", force=True)
    assert digest(out) == before
    monkeypatch.undo()
    os.utime(out)
    run_embed_slide_stage(out, tmp_path / "out", [ENCODER], device="cpu", force=True)
    assert sorted(p.name for p in out.parent.iterdir()) == [h5.name]  # no temp, no lock


def test_embed_patches_computes_what_the_slide_encoders_need(tiled: dict[int, Path], cmu_svs: Path, tmp_path: Path):
    """`embed-patches --slide-encoders mean-my_resnet18`: the features come from the encoder the slide encoder names."""
    import timm
    import torch

    from checkpoints import place_in_model_dir, save_checkpoint

    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    models = tmp_path / "models"
    place_in_model_dir(models, "my_resnet18", "resnet18.pth", save_checkpoint(state, tmp_path / "resnet18.pth"))
    plugin = Path(__file__).resolve().parents[1] / "examples" / "feature_plugins" / "my_resnet18.py"
    result = run_atlaspatch("embed-patches", "--slide", cmu_svs, "--h5", tiled[224], "-o", tmp_path / "out",
                            "--slide-encoders", "mean-my_resnet18", "--feature-plugin", plugin, "--model-dir", models,
                            "--feature-device", "cpu", "--feature-num-workers", "0")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with h5py.File(tmp_path / "out" / "patches" / tiled[224].name, "r") as handle:
        assert list(handle["features"]) == ["my_resnet18"]
        assert handle["features/my_resnet18"].shape == (handle[schema.COORDS].shape[0], 512)
    refused = run_atlaspatch("embed-patches", "--slide", cmu_svs, "--h5", tiled[256], "-o", tmp_path / "out256",
                             "--slide-encoders", "moozy", "--feature-device", "cpu")  # fmt: skip
    assert refused.returncode == 2 and "moozy needs 224 px @ 20x patches" in refused.stderr


@pytest.mark.parametrize(("encoder", "size", "patch_encoder", "width"), [
    ("titan", 512, "conch_v15", 768),
    ("prism", 224, "virchow_v1", 2560),
])  # fmt: skip
def test_titan_and_prism_through_the_stage_command(
    cmu_svs: Path, tmp_path: Path, encoder: str, size: int, patch_encoder: str, width: int
) -> None:
    """Fixture repos in the official layouts under --model-dir: the stage hands the H5's features (and, for TITAN,
    its level-0 coords and patch_size_level0) to the official method; the result equals a direct call."""
    import torch

    from slide_repos import load_fixture_model, write_prism_repo, write_titan_repo

    tiled = run_atlaspatch("segment-and-get-coords", cmu_svs, "-o", tmp_path / "tiled", "--patch-size", str(size),
                           *GEOMETRY)  # fmt: skip
    assert tiled.returncode == 0, tiled.stderr
    h5 = tmp_path / "tiled" / "patches" / f"{cmu_svs.stem}.h5"
    features = add_features(h5, patch_encoder, width, seed=3)
    repo = (write_titan_repo if encoder == "titan" else write_prism_repo)(tmp_path / "models" / encoder)
    result = run_atlaspatch("embed-slide", "--h5", h5, "--slide-encoders", encoder, "-o", tmp_path / "out",
                            "--model-dir", tmp_path / "models", "--device", "cpu",
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    model = load_fixture_model(repo)
    with h5py.File(h5, "r") as handle, torch.inference_mode():
        coords = torch.from_numpy(handle[schema.COORDS][:, :2].astype(np.int64))[None]
        batch = torch.from_numpy(features)[None]
        if encoder == "titan":
            expected = model.encode_slide_from_patch_features(batch, coords, int(handle.attrs["patch_size_level0"]))
        else:
            expected = model.slide_representations(batch, tile_mask=None)["image_embedding"]
    with h5py.File(tmp_path / "out" / "patches" / h5.name, "r") as handle:
        embedding = handle[f"slide_features/{encoder}"]
        assert embedding.shape == (768 if encoder == "titan" else 1280,) and embedding.dtype == np.float32
        assert np.allclose(embedding[()], expected.float().numpy().reshape(-1), atol=1e-5)
        assert embedding.attrs["source_patch_encoder"] == patch_encoder and embedding.attrs["precision"] == "float32"
        assert (
            embedding.attrs["weights_source"]
            == f"{'MahmoodLab/TITAN' if encoder == 'titan' else 'paige-ai/Prism'}/model.safetensors"
        )
