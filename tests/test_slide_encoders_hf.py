"""TITAN and PRISM: Hugging Face remote-code slide encoders, loaded offline through the production path.

The repositories are our own small fixtures in the official layouts (``slide_repos.py``): the same file names,
class names and method signatures, the real input/output widths, seeded random weights. Every test goes through
``load_slide_encoder`` (model dir ``DIR/<name>/``, or the Hugging Face cache with ``HF_HUB_OFFLINE=1``) and checks
the embedding against the fixture model imported straight from the repository, independently of the loader.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from atlaspatch.encoders.slide import remote, slide_encoder_registry  # noqa: E402
from atlaspatch.encoders.slide.loading import LoadedSlideEncoder, load_slide_encoder  # noqa: E402
from atlaspatch.encoders.slide.spec import SlideEncoderSpec, SlideInputs  # noqa: E402
from atlaspatch.errors import WeightsError  # noqa: E402
from atlaspatch.weights import prefetch  # noqa: E402
from checkpoints import place_in_hf_cache  # noqa: E402
from slide_repos import (  # noqa: E402
    PRISM_FILES,
    TITAN_FILES,
    load_fixture_model,
    write_prism_repo,
    write_titan_repo,
)

REGISTRY = slide_encoder_registry()
WRITERS: dict[str, Callable[[Path], Path]] = {"titan": write_titan_repo, "prism": write_prism_repo}
FILES = {"titan": TITAN_FILES, "prism": PRISM_FILES}
FEATURE_DIM = {"titan": 768, "prism": 2560}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache (and modules cache) under tmp, offline, no model dir from the environment: the hub dir."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "ATLASPATCH_MODEL_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir holding both fixture repositories, written once: DIR/titan/ and DIR/prism/ (never modified)."""
    model_dir = tmp_path_factory.mktemp("slide_repos")
    for name, write in WRITERS.items():
        write(model_dir / name)
    return model_dir


def copy_repo(repos: Path, name: str, model_dir: Path) -> Path:
    """A private copy of one fixture repository at ``model_dir/<name>/``, for tests that damage it."""
    shutil.copytree(repos / name, model_dir / name)
    return model_dir / name


def place_repo_in_hf_cache(repo: Path, hub: Path, repo_id: str) -> Path:
    """Every file of the repository in the HF cache layout (blobs, snapshots/<rev>/, refs/main): the snapshot dir."""
    for path in sorted(repo.iterdir()):
        snapshot_file = place_in_hf_cache(hub, repo_id, path.name, path)
    return snapshot_file.parent


def slide_coords(count: int = 30, step: int = 512, seed: int = 0) -> np.ndarray:
    """Level-0 top-left (x, y) of ``count`` patches on a 16 × 8 grid with gaps, away from the slide origin."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(16 * 8, size=count, replace=False)
    grid = np.stack([cells % 16, cells // 16], axis=1)
    return (grid * step + np.array([7 * step + 100, 3 * step + 40])).astype(np.int64)


def slide_inputs(
    name: str, coords: np.ndarray | None = None, patch_size_level0: int = 512, seed: int = 1
) -> SlideInputs:
    coords = slide_coords() if coords is None else coords
    features = np.random.default_rng(seed).standard_normal((len(coords), FEATURE_DIM[name])).astype(np.float32)
    return SlideInputs(Path("slide.h5"), features, coords, 512, patch_size_level0, 20)


def spec_of(name: str) -> SlideEncoderSpec:
    return REGISTRY.get(name)


def reference(name: str, repo: Path, inputs: SlideInputs) -> np.ndarray:
    """The fixture model's own method, called directly on the same slide (batch of one, CPU, fp32)."""
    model = load_fixture_model(repo)
    features = torch.from_numpy(inputs.features)[None]
    with torch.inference_mode():
        if name == "titan":
            coords = torch.from_numpy(inputs.coords)[None]
            output = model.encode_slide_from_patch_features(features, coords, int(inputs.patch_size_level0))
        else:
            output = model.slide_representations(features)["image_embedding"]
    return output[0].numpy()


def one_line_error(spec: SlideEncoderSpec, model_dir: Path | None) -> str:
    with pytest.raises(WeightsError) as error:
        load_slide_encoder(spec, "cpu", model_dir)
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


def inner(encoder: LoadedSlideEncoder) -> Any:
    """The remote-code nn.Module inside a loaded slide encoder."""
    return encoder.model.model  # type: ignore[attr-defined]


# --- the table ----------------------------------------------------------------------------------------------------


def test_rows_and_import_without_torch() -> None:
    titan, prism = spec_of("titan"), spec_of("prism")
    assert (titan.dim, titan.patch_encoder, titan.weights.repo_id) == (768, "conch_v15", "MahmoodLab/TITAN")
    assert (prism.dim, prism.patch_encoder, prism.weights.repo_id) == (1280, "virchow_v1", "paige-ai/Prism")
    assert titan.weights.snapshot and prism.weights.snapshot and titan.weights.gated and prism.weights.gated
    code = (
        "import sys; import atlaspatch.encoders.slide.registry; "
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- TITAN --------------------------------------------------------------------------------------------------------


def test_titan_from_model_dir_equals_the_fixture_model(repos: Path, hub: Path) -> None:
    encoder = load_slide_encoder(spec_of("titan"), "cpu", repos)
    inputs = slide_inputs("titan")
    embedding = encoder.encode(inputs)
    assert embedding.shape == (768,) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, reference("titan", repos / "titan", inputs), rtol=1e-5, atol=1e-6)
    assert encoder.precision == "float32" and encoder.device == "cpu"
    assert encoder.weights_source == "MahmoodLab/TITAN/model.safetensors" and len(encoder.weights_sha256) == 64
    # transformers' modules cache is where HF_HOME says now, not where it said when transformers was imported
    assert (hub.parent / "modules" / "transformers_modules" / "titan" / "modeling_titan.py").is_file()


def test_titan_adapter_passes_features_coords_and_patch_size(repos: Path, hub: Path) -> None:
    encoder = load_slide_encoder(spec_of("titan"), "cpu", repos)
    model = inner(encoder)
    seen: list[tuple[Any, ...]] = []
    original = model.encode_slide_from_patch_features

    def spy(features: Any, coords: Any, patch_size_lv0: Any) -> Any:
        seen.append((features.dtype, tuple(features.shape), coords.dtype, tuple(coords.shape), patch_size_lv0))
        return original(features, coords, patch_size_lv0)

    model.encode_slide_from_patch_features = spy
    inputs = slide_inputs("titan")
    base = encoder.encode(inputs)
    assert seen == [(torch.float32, (1, 30, 768), torch.int64, (1, 30, 2), 512)]
    assert type(seen[0][-1]) is int

    coarser = SlideInputs(**{**vars(inputs), "patch_size_level0": 1024})
    at_1024 = encoder.encode(coarser)
    assert not np.allclose(at_1024, base, atol=1e-3)
    np.testing.assert_allclose(at_1024, reference("titan", repos / "titan", coarser), rtol=1e-5, atol=1e-6)

    # the same patches on a 40x slide: coords and patch_size_level0 both double, the grid and embedding do not change
    at_40x = SlideInputs(**{**vars(inputs), "coords": inputs.coords * 2, "patch_size_level0": 1024})
    np.testing.assert_allclose(encoder.encode(at_40x), base, rtol=1e-5, atol=1e-6)

    swapped = SlideInputs(**{**vars(inputs), "coords": np.ascontiguousarray(inputs.coords[:, ::-1])})
    assert not np.allclose(encoder.encode(swapped), base, atol=1e-3)


def test_titan_fixture_rejects_what_the_real_code_would_misread(repos: Path) -> None:
    model = load_fixture_model(repos / "titan")
    features, coords = torch.randn(1, 4, 768), torch.tensor([[[0, 0], [512, 0], [0, 512], [512, 512]]])
    with pytest.raises(ValueError, match="patch_features"):
        model.encode_slide_from_patch_features(features[0], coords, 512)
    with pytest.raises(TypeError, match="integer"):
        model.encode_slide_from_patch_features(features, coords.float(), 512)
    with pytest.raises(TypeError, match="patch_size_lv0"):
        model.encode_slide_from_patch_features(features, coords, np.int64(512))


def test_same_dir_name_other_code_is_reimported(repos: Path, hub: Path, tmp_path: Path) -> None:
    """Two repositories both named ``titan``: the second load runs the second repository's code, not the first's."""
    first = load_slide_encoder(spec_of("titan"), "cpu", repos)
    other = copy_repo(repos, "titan", tmp_path / "other")
    modeling = other / "modeling_titan.py"
    modeling.write_text(
        modeling.read_text().replace("return self.head(self.norm(x)[:, 0])", "return 2 * self.head(self.norm(x)[:, 0])")
    )
    second = load_slide_encoder(spec_of("titan"), "cpu", tmp_path / "other")
    inputs = slide_inputs("titan")
    np.testing.assert_allclose(second.encode(inputs), 2 * first.encode(inputs), rtol=1e-5, atol=1e-6)


# --- PRISM --------------------------------------------------------------------------------------------------------


def test_prism_from_model_dir_without_its_text_decoder(repos: Path, hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_keys: list[str] = []
    decoder_devices: set[str] = set()
    read_checkpoint, drop_submodules = remote.read_checkpoint, remote.drop_submodules

    def spy_read(*args: Any) -> dict[str, Any]:
        state = read_checkpoint(*args)
        read_keys.extend(state)
        return state

    def spy_drop(model: Any, names: Any) -> None:
        decoder_devices.update(param.device.type for param in model.text_decoder.parameters())
        drop_submodules(model, names)

    monkeypatch.setattr(remote, "read_checkpoint", spy_read)
    monkeypatch.setattr(remote, "drop_submodules", spy_drop)
    encoder = load_slide_encoder(spec_of("prism"), "cpu", repos)

    with safe_open(str(repos / "prism" / "model.safetensors"), framework="pt") as handle:
        in_file = list(handle.keys())
    assert any(key.startswith("text_decoder.") for key in in_file)
    assert decoder_devices == {"meta"}  # built without memory, then dropped
    assert read_keys and not any(key.startswith("text_decoder.") for key in read_keys)  # its weights never read
    model = inner(encoder)
    assert model.text_decoder is None
    assert not remote.meta_tensors(model)
    assert sorted(model.state_dict()) == sorted(key for key in in_file if not key.startswith("text_decoder."))

    inputs = slide_inputs("prism")
    embedding = encoder.encode(inputs)
    assert embedding.shape == (1280,) and embedding.dtype == np.float32 and encoder.precision == "float32"
    np.testing.assert_allclose(embedding, reference("prism", repos / "prism", inputs), rtol=1e-5, atol=1e-6)
    assert encoder.weights_source == "paige-ai/Prism/model.safetensors"


def rewrite_weights(repo: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = repo / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_prism_ignores_extra_text_decoder_keys(repos: Path, hub: Path, tmp_path: Path) -> None:
    repo = copy_repo(repos, "prism", tmp_path / "models")
    rewrite_weights(repo, lambda state: state.update({"text_decoder.extra.weight": torch.zeros(3)}))
    encoder = load_slide_encoder(spec_of("prism"), "cpu", tmp_path / "models")
    inputs = slide_inputs("prism")
    np.testing.assert_allclose(
        encoder.encode(inputs), reference("prism", repos / "prism", inputs), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        (
            "prism",
            lambda s: s.update({"image_resampler.extra.weight": torch.zeros(3)}),
            "unexpected keys: image_resampler.extra.weight",
        ),
        ("prism", lambda s: s.pop("image_resampler.to_latent.bias"), "missing keys: image_resampler.to_latent.bias"),
        ("titan", lambda s: s.pop("head.weight"), "missing keys: head.weight"),
        (
            "titan",
            lambda s: s.update({"head.bias": torch.zeros(5)}),
            "shape mismatches: head.bias (file [5], model [768])",
        ),
    ],
    ids=["prism-unexpected", "prism-missing", "titan-missing", "titan-shape"],
)
def test_weights_that_do_not_fit_the_code_are_a_one_line_error(
    name: str, change: Callable[[dict[str, Any]], Any], expected: str, repos: Path, hub: Path, tmp_path: Path
) -> None:
    repo = copy_repo(repos, name, tmp_path / "models")
    rewrite_weights(repo, change)
    message = one_line_error(spec_of(name), tmp_path / "models")
    assert expected in message and str(repo) in message and spec_of(name).weights.repo_id in message


# --- the Hugging Face cache, offline ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["titan", "prism"])
def test_from_the_hf_cache_offline(name: str, repos: Path, hub: Path) -> None:
    snapshot = place_repo_in_hf_cache(repos / name, hub, spec_of(name).weights.repo_id)
    assert (snapshot / "model.safetensors").is_symlink()
    encoder = load_slide_encoder(spec_of(name), "cpu", None)
    inputs = slide_inputs(name)
    embedding = encoder.encode(inputs)
    assert embedding.shape == (spec_of(name).dim,) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, reference(name, repos / name, inputs), rtol=1e-5, atol=1e-6)
    assert list((hub.parent / "modules" / "transformers_modules").rglob(f"modeling_{name}.py"))


def test_modules_cache_follows_hf_modules_cache(repos: Path, hub: Path, tmp_path: Path, monkeypatch) -> None:
    from transformers import dynamic_module_utils

    before = dynamic_module_utils.HF_MODULES_CACHE
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    load_slide_encoder(spec_of("titan"), "cpu", repos)
    assert (tmp_path / "modules" / "transformers_modules" / "titan" / "configuration_titan.py").is_file()
    assert not (hub.parent / "modules").exists()
    assert before == dynamic_module_utils.HF_MODULES_CACHE  # transformers' own setting is left as it was


@pytest.mark.parametrize("name", ["titan", "prism"])
def test_missing_repo_offline_names_repo_and_licence(name: str, hub: Path, tmp_path: Path) -> None:
    message = one_line_error(spec_of(name), tmp_path / "empty")
    weights = spec_of(name).weights
    assert weights.repo_id in message and "HF_HUB_OFFLINE=1" in message
    assert f"accept the licence ({weights.licence}) at {weights.url}" in message
    assert f"atlaspatch models download {name}" in message


def test_prefetch_copies_the_cached_snapshot_into_the_model_dir(repos: Path, hub: Path, tmp_path: Path) -> None:
    place_repo_in_hf_cache(repos / "titan", hub, "MahmoodLab/TITAN")
    model_dir = tmp_path / "models"
    target = prefetch(spec_of("titan").weights, model_dir)
    assert target == model_dir / "titan" / "model.safetensors"
    copied = model_dir / "titan"
    assert sorted(p.name for p in copied.iterdir()) == sorted(TITAN_FILES)
    assert not any(p.is_symlink() for p in copied.iterdir())
    shutil.rmtree(hub)  # the model dir alone must do
    encoder = load_slide_encoder(spec_of("titan"), "cpu", model_dir)
    inputs = slide_inputs("titan")
    np.testing.assert_allclose(
        encoder.encode(inputs), reference("titan", repos / "titan", inputs), rtol=1e-5, atol=1e-6
    )


# --- broken repositories ------------------------------------------------------------------------------------------


def _without_config(repo: Path) -> None:
    (repo / "config.json").unlink()


def _without_auto_map(repo: Path) -> None:
    config = json.loads((repo / "config.json").read_text())
    del config["auto_map"]
    (repo / "config.json").write_text(json.dumps(config))


def _needs_a_missing_package(repo: Path) -> None:
    modeling = repo / "modeling_titan.py"
    modeling.write_text("import atlaspatch_fixture_missing_extra\n" + modeling.read_text())


def _without_the_model_class(repo: Path) -> None:
    modeling = repo / "modeling_titan.py"
    modeling.write_text(modeling.read_text().replace("class Titan(", "class Renamed("))


def _without_code(repo: Path) -> None:
    (repo / "modeling_titan.py").unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_without_config, "no config.json; the directory must hold the whole repository"),
        (_without_auto_map, "config.json has no auto_map"),
        (_needs_a_missing_package, "atlaspatch_fixture_missing_extra"),
        (_without_the_model_class, "its code cannot be imported (AttributeError"),
        (_without_code, "modeling_titan.py (named by config.json auto_map) is missing"),
    ],
    ids=["no-config", "no-auto-map", "missing-package", "no-model-class", "no-code"],
)
def test_broken_repo_is_a_one_line_error(
    damage: Callable[[Path], None], expected: str, repos: Path, hub: Path, tmp_path: Path
) -> None:
    repo = copy_repo(repos, "titan", tmp_path / "models")
    damage(repo)
    message = one_line_error(spec_of("titan"), tmp_path / "models")
    assert str(repo) in message and "MahmoodLab/TITAN" in message
    assert expected in message
    assert ("pip install 'atlaspatch-nf[slide-encoders]'" in message) == (damage is _needs_a_missing_package)


# --- building without allocating ----------------------------------------------------------------------------------


def test_parameters_on_meta_keeps_buffers() -> None:
    with remote.parameters_on_meta():
        norm = torch.nn.BatchNorm1d(4)
        linear = torch.nn.Linear(3, 2)
    assert norm.weight.is_meta and linear.weight.is_meta and linear.bias.is_meta
    assert not norm.running_mean.is_meta and torch.equal(norm.running_var, torch.ones(4))
    assert isinstance(linear.weight, torch.nn.Parameter) and linear.weight.requires_grad
    assert not torch.nn.Linear(3, 2).weight.is_meta  # patched only inside


# --- CUDA ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["titan", "prism"])
def test_cuda_runs_in_fp16_autocast(name: str, repos: Path, hub: Path) -> None:
    encoder = load_slide_encoder(spec_of(name), "cuda", repos)
    assert encoder.precision == "float16" and encoder.device == "cuda"
    inputs = slide_inputs(name)
    embedding = encoder.encode(inputs)
    assert embedding.shape == (spec_of(name).dim,) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, reference(name, repos / name, inputs), rtol=0.05, atol=0.05)
