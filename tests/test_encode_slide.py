"""`atlaspatch encode-slide` end to end on the real slides: segment → tile → patch features → slide embeddings.

MOOZY (through the `moozy` package) and mean pooling of its Lunit ViT-S/8 features run on a folder holding the
real CMU slides (Aperio SVS, pyramidal TIFF) and a corrupt file. Weights: random-init checkpoints of the real
architectures, in the upstream file formats, in an offline Hugging Face cache (they test the machinery; they are
not models).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlaspatch.encoders.patch import patch_encoder_registry
from atlaspatch.h5 import schema
from atlaspatch.slides.discovery import find_slides
from conftest import REPO, run_atlaspatch

LUNIT = "lunit_vit_small_patch8_dino"
ENCODERS = f"moozy,mean-{LUNIT}"
GEOMETRY = ("--patch-size", "224", "--target-mag", "20", "--segmenter", "otsu", "--device", "cpu")
FAST = ("--feature-num-workers", "1", "--feature-batch-size", "16")


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline Hugging Face home holding random-init Lunit ViT-S/8 and MOOZY checkpoints, where the hub puts them."""
    import torch

    from atlaspatch.encoders.slide.moozy import WEIGHTS as MOOZY_WEIGHTS
    from checkpoints import place_in_hf_cache, save_checkpoint
    from moozy_checkpoint import write_moozy_checkpoint

    root = tmp_path_factory.mktemp("encode-hf")
    spec = patch_encoder_registry().get(LUNIT)
    torch.manual_seed(1)
    lunit = save_checkpoint(spec.architecture().state_dict(), root / "upstream" / spec.weights.filename)
    moozy = write_moozy_checkpoint(root / "upstream" / MOOZY_WEIGHTS.filename, seed=0)
    cache = root / "hf_home" / "hub"
    place_in_hf_cache(cache, spec.weights.repo_id, spec.weights.filename, lunit)
    place_in_hf_cache(cache, MOOZY_WEIGHTS.repo_id, MOOZY_WEIGHTS.filename, moozy)
    return root / "hf_home"


def offline(hf_home: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "ATLASPATCH_MODEL_DIR": ""}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, cmu_pyramid: Path) -> Path:
    folder = tmp_path_factory.mktemp("encode-slides")
    for path in (cmu_svs, cmu_pyramid):
        (folder / path.name).symlink_to(path)
    (folder / "corrupt.svs").write_bytes(b"this is not a slide\n" * 64)
    return folder


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, slides: Path, hf_home: Path):
    out = tmp_path_factory.mktemp("encode-out")
    result = run_atlaspatch("encode-slide", slides, "-o", out, "--slide-encoders", ENCODERS, *GEOMETRY, *FAST,
                            env=offline(hf_home))  # fmt: skip
    return out, result


def good_stems(slides: Path) -> list[str]:
    return [source.stem for source in find_slides(slides) if source.stem != "corrupt"]


def summary(output: str) -> dict[str, dict[str, str]]:
    """The closing table, as {slide: {column: cell}} (continuation lines of wrapped notes are skipped)."""
    rows = [[cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]] for line in output.splitlines()]
    rows = [row for row in rows if row]
    header = next(row for row in rows if row[0] == "slide")
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows if row[0] and row is not header}


def counts(row: dict[str, str]) -> tuple[str, ...]:
    """features computed, features reused, embeddings computed, embeddings reused, status."""
    columns = ("features computed", "features reused", "embeddings computed", "embeddings reused", "status")
    return tuple(row[column] for column in columns)


def fingerprint(dataset: h5py.Dataset) -> str:
    from atlaspatch.stages.embed_slide import features_fingerprint

    return features_fingerprint(dataset)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_run_writes_features_and_embeddings(first_run, slides: Path) -> None:
    out, result = first_run
    assert result.returncode == 1, result.stdout + result.stderr  # the corrupt file failed, alone
    assert "2 of 3 slide(s) succeeded, 1 failed" in result.stdout
    assert "FAILED corrupt: corrupt.svs: not a format OpenSlide can read" in result.stderr
    assert "Traceback" not in result.stderr
    table = summary(result.stdout)
    assert table["corrupt"]["status"] == "failed"
    for stem in good_stems(slides):
        assert table[stem]["H5"] == "tiled" and counts(table[stem]) == ("1", "0", "2", "0", "ok")
        with h5py.File(out / "patches" / f"{stem}.h5", "r") as handle:
            n = handle[schema.COORDS].shape[0]
            assert n > 50 and int(table[stem]["patches"]) == n
            features = handle[f"features/{LUNIT}"]
            assert features.shape == (n, 384) and features.dtype == np.float32
            assert features.attrs["complete"]
            assert set(handle[schema.SLIDE_FEATURES]) == {"moozy", f"mean-{LUNIT}"}
            moozy = handle["slide_features/moozy"]
            mean = handle[f"slide_features/mean-{LUNIT}"]
            assert moozy.shape == (768,) and moozy.dtype == np.float32 and np.isfinite(moozy[()]).all()
            assert moozy[()].std() > 0
            assert mean.shape == (384,) and mean.dtype == np.float32
            assert np.allclose(mean[()], np.mean(features[()].astype(np.float64), axis=0), atol=1e-6)
            for dataset, encoder, dim in ((moozy, "moozy", 768), (mean, f"mean-{LUNIT}", 384)):
                attrs = dict(dataset.attrs)
                assert attrs["encoder_name"] == encoder and attrs["source_patch_encoder"] == LUNIT
                assert attrs["num_patches"] == n and attrs["dim"] == dim
                assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == handle.attrs["patch_size_level0"]
                assert attrs["target_magnification"] == 20
                assert attrs["source_features_sha256"] == fingerprint(features)
            assert moozy.attrs["weights_source"] == "AtlasAnalyticsLab/MOOZY/moozy.pt"
            assert len(moozy.attrs["weights_sha256"]) == 64
    assert not list((out / "patches").glob("corrupt*"))
    leftovers = [p.name for p in (out / "patches").iterdir() if p.suffix != ".h5" or p.name.startswith(".")]
    assert leftovers == []  # no temp files, no locks


def test_second_run_reuses_everything(first_run, slides: Path, hf_home: Path) -> None:
    out, first = first_run
    assert first.returncode == 1, first.stderr
    before = {p.name: (p.stat().st_mtime_ns, file_digest(p)) for p in (out / "patches").glob("*.h5")}
    result = run_atlaspatch("encode-slide", slides, "-o", out, "--slide-encoders", ENCODERS, *GEOMETRY, *FAST,
                            env=offline(hf_home))  # fmt: skip
    assert result.returncode == 1, result.stderr
    table = summary(result.stdout)
    for stem in good_stems(slides):
        assert table[stem]["H5"] == "reused" and counts(table[stem]) == ("0", "1", "0", "2", "ok")
    after = {p.name: (p.stat().st_mtime_ns, file_digest(p)) for p in (out / "patches").glob("*.h5")}
    assert after == before  # nothing rewritten


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--slide-encoders", "titan,prism", "--patch-size", "512"), "need different patch geometries"),
        (("--slide-encoders", "moozy", "--patch-size", "256"), "--patch-size 256 does not match moozy (224 px @ 20x)"),
        (("--slide-encoders", "moozy", "--patch-size", "224", "--target-mag", "10"), "--allow-mag-mismatch"),
        (("--slide-encoders", "mean-no_such_encoder", "--patch-size", "224"), "is not a patch encoder"),
        (("--slide-encoders", "moozy,moozy", "--patch-size", "224"), "listed twice"),
    ],
)
def test_incompatible_requests_are_refused_before_any_work(
    tmp_path: Path, cmu_svs: Path, args: tuple[str, ...], message: str
) -> None:
    if "--target-mag" not in args:
        args = (*args, "--target-mag", "20")
    result = run_atlaspatch("encode-slide", cmu_svs, "-o", tmp_path / "out", *args, "--segmenter", "otsu")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_changed_geometry_is_refused_and_nothing_changes(first_run, slides: Path, hf_home: Path) -> None:
    out, _ = first_run
    before = {p.name: file_digest(p) for p in (out / "patches").glob("*.h5")}
    result = run_atlaspatch("encode-slide", slides, "-o", out, "--slide-encoders", f"mean-{LUNIT}",
                            "--patch-size", "256", *GEOMETRY[2:], env=offline(hf_home))  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    for stem in good_stems(slides):
        assert f"{stem}: patch_size 224 (file) != 256 (requested)" in result.stderr
    assert "use --force" in result.stderr
    assert {p.name: file_digest(p) for p in (out / "patches").glob("*.h5")} == before


def copy_output(out: Path, stem: str, target: Path) -> Path:
    (target / "patches").mkdir(parents=True)
    shutil.copy2(out / "patches" / f"{stem}.h5", target / "patches" / f"{stem}.h5")
    return target / "patches" / f"{stem}.h5"


def test_deleted_features_are_recomputed_and_embeddings_refreshed(
    first_run, cmu_svs: Path, hf_home: Path, tmp_path: Path
) -> None:
    out, _ = first_run
    h5 = copy_output(out, cmu_svs.stem, tmp_path / "out")
    with h5py.File(h5, "r+") as handle:
        old = {name: (handle[f"slide_features/{name}"].attrs["source_features_sha256"]) for name in
               handle[schema.SLIDE_FEATURES]}  # fmt: skip
        del handle[f"features/{LUNIT}"]
    result = run_atlaspatch("encode-slide", cmu_svs, "-o", tmp_path / "out", "--slide-encoders", ENCODERS,
                            *GEOMETRY, *FAST, env=offline(hf_home))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(summary(result.stdout)[cmu_svs.stem]) == ("1", "0", "2", "0", "ok")
    with h5py.File(h5, "r") as handle:
        features = handle[f"features/{LUNIT}"]
        for name, previous in old.items():
            current = handle[f"slide_features/{name}"].attrs["source_features_sha256"]
            assert current == fingerprint(features) and current != previous
        mean = handle[f"slide_features/mean-{LUNIT}"][()]
        assert np.allclose(mean, features[()].astype(np.float64).mean(axis=0), atol=1e-6)


def test_changed_features_make_the_embedding_stale(first_run, cmu_svs: Path, hf_home: Path, tmp_path: Path) -> None:
    """Features edited in place (same attrs, other values): only the embeddings are recomputed, from the new ones."""
    out, _ = first_run
    h5 = copy_output(out, cmu_svs.stem, tmp_path / "out")
    with h5py.File(h5, "r+") as handle:
        handle[f"features/{LUNIT}"][0] += 1.0
        edited = handle[f"features/{LUNIT}"][()]
    result = run_atlaspatch("encode-slide", cmu_svs, "-o", tmp_path / "out", "--slide-encoders", f"mean-{LUNIT}",
                            *GEOMETRY, *FAST, env=offline(hf_home))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(summary(result.stdout)[cmu_svs.stem]) == ("0", "1", "1", "0", "ok")
    with h5py.File(h5, "r") as handle:
        assert np.array_equal(handle[f"features/{LUNIT}"][()], edited)
        assert np.allclose(handle[f"slide_features/mean-{LUNIT}"][()], edited.astype(np.float64).mean(0), atol=1e-6)


def test_force_recomputes_everything(first_run, cmu_svs: Path, hf_home: Path, tmp_path: Path) -> None:
    out, _ = first_run
    h5 = copy_output(out, cmu_svs.stem, tmp_path / "out")
    with h5py.File(h5, "r") as handle:
        before = {
            "created": handle.attrs["creation_date"],
            "features": handle[f"features/{LUNIT}"].attrs["creation_date"],
            "moozy": handle["slide_features/moozy"][()],
        }
    result = run_atlaspatch("encode-slide", cmu_svs, "-o", tmp_path / "out", "--slide-encoders", ENCODERS,
                            *GEOMETRY, *FAST, "--force", env=offline(hf_home))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    row = summary(result.stdout)[cmu_svs.stem]
    assert row["H5"] == "tiled" and counts(row) == ("1", "0", "2", "0", "ok")
    with h5py.File(h5, "r") as handle:
        assert handle[f"features/{LUNIT}"].attrs["creation_date"] >= before["features"]
        assert handle["slide_features/moozy"].attrs["seconds"] >= 0
        # same slide, same weights, CPU: the rebuilt embedding equals the first one
        assert np.allclose(handle["slide_features/moozy"][()], before["moozy"], atol=1e-4)


def readme_main_command() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- main-command -->", 1)[1].split("<!-- /main-command -->", 1)[0]
    return block.split("```bash", 1)[1].split("```", 1)[0].strip()


def test_readme_main_command_works_with_provided_weights(tmp_path: Path, cmu_svs: Path, hf_home: Path) -> None:
    """The README's encode-slide step, as written, on the sample slide: weights from an offline HF cache."""
    step = next(part.strip() for part in readme_main_command().split("&&") if " encode-slide " in part)
    argv = shlex.split(step)
    assert argv[0] == ".venv/bin/atlaspatch" and "moozy" in argv
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "CMU-1-Small-Region.svs").symlink_to(cmu_svs)
    result = run_atlaspatch(*argv[1:], *FAST, cwd=tmp_path, env=offline(hf_home))
    assert result.returncode == 0, result.stdout + result.stderr
    with h5py.File(tmp_path / "output" / "patches" / "CMU-1-Small-Region.h5", "r") as handle:
        embedding = handle["slide_features/moozy"]
        assert embedding.shape == (768,) and embedding.dtype == np.float32
        assert handle[f"features/{LUNIT}"].shape == (handle[schema.COORDS].shape[0], 384)
    assert (tmp_path / "output" / "visualization" / "CMU-1-Small-Region.png").exists()
