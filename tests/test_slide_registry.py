"""The slide encoder registry and the geometry plan encode-slide decides before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atlaspatch.encoders.slide import plan_slide_encoders, slide_encoder_registry
from atlaspatch.errors import ConfigError
from conftest import run_atlaspatch

# name: (dim, patch encoder, patch px, magnification, weights repo, gated) — models.md / the model cards
EXPECTED = {
    "titan": (768, "conch_v15", 512, 20, "MahmoodLab/TITAN", True),
    "prism": (1280, "virchow_v1", 224, 20, "paige-ai/Prism", True),
    "moozy": (768, "lunit_vit_small_patch8_dino", 224, 20, "AtlasAnalyticsLab/MOOZY", False),
}


@pytest.fixture(scope="module")
def registry():
    return slide_encoder_registry()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_rows(registry, name: str) -> None:
    spec = registry.get(name)
    dim, patch_encoder, size, mag, repo, gated = EXPECTED[name]
    assert (spec.dim, spec.patch_encoder, spec.patch_size, spec.magnification) == (dim, patch_encoder, size, mag)
    assert spec.weights.repo_id == repo and spec.weights.gated is gated
    assert patch_encoder in registry.patch_encoders.names()  # every slide encoder's input is a registered encoder


def test_feature_widths_match_what_the_slide_encoders_consume(registry) -> None:
    widths = {name: registry.patch_encoders.get(row[1]).dim for name, row in EXPECTED.items()}
    assert widths == {"titan": 768, "prism": 2560, "moozy": 384}


def test_mean_of_any_patch_encoder(registry) -> None:
    for patch in registry.patch_encoders:
        spec = registry.get(f"mean-{patch.name}")
        assert (spec.dim, spec.patch_encoder, spec.patch_size, spec.weights) == (patch.dim, patch.name, None, None)
    with pytest.raises(ConfigError, match="'nope' is not a patch encoder"):
        registry.get("mean-nope")
    with pytest.raises(ConfigError, match="unknown slide encoder 'gigapath'"):
        registry.get("gigapath")


def test_shared_geometry_one_pass(registry) -> None:
    plan = plan_slide_encoders([registry.get(n) for n in ("prism", "moozy", "mean-uni_v1")], 224, 20)
    assert plan.patch_encoders == ("lunit_vit_small_patch8_dino", "uni_v1", "virchow_v1")
    # mean-* follows whatever geometry the run has
    assert plan_slide_encoders([registry.get("mean-uni_v1")], 256, 40).patch_encoders == ("uni_v1",)


def test_titan_and_prism_are_refused_with_what_to_run_instead(registry) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_slide_encoders([registry.get("titan"), registry.get("prism")], 512, 20)
    message = str(caught.value)
    assert "titan (512 px @ 20x) and prism (224 px @ 20x)" in message
    assert "--slide-encoders titan --patch-size 512" in message and "--slide-encoders prism --patch-size 224" in message


def test_patch_size_and_magnification_must_match(registry) -> None:
    titan = registry.get("titan")
    with pytest.raises(ConfigError, match="--patch-size 224 does not match titan"):
        plan_slide_encoders([titan], 224, 20)
    with pytest.raises(ConfigError, match=r"--target-mag 40 does not match titan .* --allow-mag-mismatch"):
        plan_slide_encoders([titan], 512, 40)
    assert plan_slide_encoders([titan], 512, 40, allow_mag_mismatch=True).patch_encoders == ("conch_v15",)


def test_registry_import_does_not_import_torch() -> None:
    code = "import sys, atlaspatch.encoders.slide.registry, atlaspatch.models; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_models_lists_slide_encoders(tmp_path) -> None:
    result = run_atlaspatch("models", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 5}
    for name in ("titan", "prism", "moozy", "mean-<patch encoder>"):
        assert "slide encoder" in lines[name], result.stdout
    assert "512 px @ 20x" in lines["titan"] and "AtlasAnalyticsLab/MOOZY/moozy.pt" in lines["moozy"]
    result = run_atlaspatch("models", "download", "mean-uni_v1")
    assert result.returncode == 0 and "mean-uni_v1: no weights needed" in result.stdout, result.stderr
