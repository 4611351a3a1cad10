"""The patch-encoder registry as a table: names, dims, weights sources, plugins, and `atlaspatch models`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atlaspatch.encoders.patch import PatchEncoderRegistry, PatchEncoderSpec, Preprocess, parse_names
from atlaspatch.encoders.patch.registry import builtin_specs, patch_encoder_registry
from atlaspatch.errors import ConfigError
from checkpoints import place_in_hf_cache
from conftest import REPO, run_atlaspatch

EXAMPLE_PLUGIN = REPO / "examples" / "feature_plugins" / "my_resnet18.py"
# What the seed slide encoders need (TITAN, PRISM, MOOZY) and what users ask for most, with their published dims.
EXPECTED_DIMS = {
    "conch_v15": 768,
    "virchow_v1": 2560,
    "lunit_vit_small_patch8_dino": 384,
    "resnet50": 1024,
    "uni_v1": 1024,
    "uni_v2": 1536,
    "virchow_v2": 2560,
    "h_optimus_0": 1536,
    "h_optimus_1": 1536,
    "h0_mini": 1536,
    "prov_gigapath": 1536,
    "phikon_v1": 768,
    "phikon_v2": 1024,
    "hibou_l": 1024,
    "midnight": 3072,
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)
    return cache


def test_required_encoders_are_registered_with_their_published_dims() -> None:
    registry = patch_encoder_registry()
    assert {name: registry.get(name).dim for name in EXPECTED_DIMS} == EXPECTED_DIMS
    kaiko = [name for name in registry.names() if name.startswith("kaiko")]
    assert len(kaiko) >= 4


def test_every_builtin_entry_is_complete_and_tested() -> None:
    """One row per encoder, each with weights and geometry; and each one is exercised by a checkpoint test."""
    specs = builtin_specs()
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names))
    tests = "".join(path.read_text() for path in (REPO / "tests").glob("test_patch_encoders_*.py"))
    for spec in specs:
        assert spec.weights is not None and spec.weights.repo_id and spec.weights.filename, spec.name
        assert spec.weights.name == spec.name  # the model-dir subfolder is the encoder's name
        assert spec.dim > 0 and spec.preprocess.input_size > 0 and spec.description, spec.name
        assert spec.recommended is not None, spec.name
        assert f'"{spec.name}"' in tests, f"{spec.name} has no checkpoint test"


def test_listing_the_registry_imports_no_torch() -> None:
    code = (
        "import sys; from atlaspatch.models import catalogue; catalogue(); "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("conch_v15", ["conch_v15"]), ("UNI_v1, virchow_v1", ["uni_v1", "virchow_v1"]), ("a b,c", ["a", "b", "c"])],
)
def test_parse_names(text: str, expected: list[str]) -> None:
    assert parse_names(text) == expected


@pytest.mark.parametrize("text", ["", " , ", "uni_v1,uni_v1"])
def test_parse_names_refuses_empty_and_repeated(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_names(text)


def _spec(name: str) -> PatchEncoderSpec:
    return PatchEncoderSpec(name=name, dim=8, preprocess=Preprocess(32), weights=None, architecture=lambda: None)


def test_registry_refuses_duplicates_and_bad_names() -> None:
    registry = PatchEncoderRegistry([_spec("mine")])
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(_spec("mine"))
    with pytest.raises(ConfigError, match="lower-case"):
        registry.register(_spec("Mine!"))
    with pytest.raises(ConfigError, match="expects a PatchEncoderSpec"):
        registry.register("mine")  # type: ignore[arg-type]


def test_plugins_by_file_and_by_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "my_resnet18" in patch_encoder_registry([EXAMPLE_PLUGIN])
    (tmp_path / "lab_encoders.py").write_text(EXAMPLE_PLUGIN.read_text().replace('"my_resnet18"', '"lab_resnet18"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = patch_encoder_registry(["lab_encoders", EXAMPLE_PLUGIN])
    assert {"lab_resnet18", "my_resnet18"} <= set(registry.names())
    with pytest.raises(ConfigError, match="not a file and not an importable module"):
        patch_encoder_registry(["no_such_plugin_module"])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no register_patch_encoders(registry) function"),
        ("def register_patch_encoders(registry):\n    raise ValueError('bad')\n", "failed: ValueError: bad"),
        ("import not_a_real_module_xyz\n", "failed to import: ModuleNotFoundError"),
        (
            "from atlaspatch.encoders.patch import PatchEncoderSpec, Preprocess\n"
            "def register_patch_encoders(registry):\n"
            "    registry.register(PatchEncoderSpec('uni_v1', 1, Preprocess(8), None, lambda: None))\n",
            "'uni_v1' is already registered",
        ),
    ],
)
def test_broken_plugins_are_one_line_config_errors(tmp_path: Path, source: str, message: str) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(source)
    with pytest.raises(ConfigError, match="--feature-plugin") as caught:
        patch_encoder_registry([plugin])
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="no such file"):
        patch_encoder_registry([tmp_path / "missing.py"])


def test_models_cli_lists_encoders_and_prefetches(tmp_path: Path, offline: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(offline.parent)}
    listing = run_atlaspatch("models", "--feature-plugin", EXAMPLE_PLUGIN, env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.startswith("│ ")}
    conch = [cell.strip() for cell in rows["conch_v15"].split("│")]
    assert conch[2:6] == ["patch encoder", "768", "resize 448 bilinear, crop 448", "512 px @ 20x"]
    assert conch[7:10] == ["yes", "CC-BY-NC-ND-4.0", "no"]
    assert "my_resnet18" in rows and "lunit_vit_small_patch8_dino" in rows

    gated = run_atlaspatch("models", "download", "conch_v15", "--model-dir", tmp_path / "models", env=env)
    assert gated.returncode == 2 and gated.stderr.count("\n") == 1
    assert "accept the licence (CC-BY-NC-ND-4.0) at https://huggingface.co/MahmoodLab/conchv1_5" in gated.stderr

    spec = patch_encoder_registry().get("lunit_vit_small_patch8_dino")
    blob = tmp_path / "blob.safetensors"
    blob.write_bytes(b"lunit weights")
    place_in_hf_cache(offline, spec.weights.repo_id, spec.weights.filename, blob)
    fetched = run_atlaspatch(
        "models", "download", "lunit_vit_small_patch8_dino", "otsu", "--model-dir", tmp_path / "models", env=env
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "models" / spec.name / spec.weights.filename).read_bytes() == b"lunit weights"
    listed = run_atlaspatch("models", "--model-dir", tmp_path / "models", env=env)
    assert f"lunit_vit_small_patch8_dino: {tmp_path / 'models' / spec.name / spec.weights.filename}" in listed.stdout
