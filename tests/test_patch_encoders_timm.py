"""timm patch encoders (UNI, UNI2-h, Virchow, H-optimus, H0-mini, GigaPath, Lunit, kaiko, ResNet-50 trunc).

Each encoder gets a checkpoint of its real architecture (built on the meta device, ``to_empty``, filled with small
random values: seconds even at 1B parameters), written in the upstream on-disk format (a ``torch.save``'d plain timm
state dict as ``pytorch_model.bin``, or ``model.safetensors``) and loaded through the production path —
``--model-dir`` layout, and the Hugging Face cache with ``HF_HUB_OFFLINE=1`` — before real CMU patches go through
the encoder's preprocessing and head. Checks that do not come from our own table: parameter counts against the
published ones and tensor shapes implied by the published architectures (both on the meta device, so free), timm's
own pooled output, the model cards' CLS ⊕ mean formula and TRIDENT's ResNet-50 recipe as references, kaiko's
518-px checkpoint grid, and one-line errors for files of the wrong architecture. The ViT-H/ViT-g models (0.6–1.1B
parameters) are ``slow`` (they still run in CI): model-dir path only, one patch.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from atlaspatch.encoders.patch import resnet, timm_models  # noqa: E402
from atlaspatch.encoders.patch.loading import LoadedPatchEncoder, load_patch_encoder  # noqa: E402
from atlaspatch.encoders.patch.registry import PatchEncoderRegistry  # noqa: E402
from atlaspatch.encoders.patch.spec import PatchEncoderSpec  # noqa: E402
from atlaspatch.encoders.patch.transforms import to_model_input  # noqa: E402
from atlaspatch.errors import WeightsError  # noqa: E402
from checkpoints import place_in_hf_cache, place_in_model_dir, real_patches, save_checkpoint  # noqa: E402

SPECS: dict[str, PatchEncoderSpec] = {spec.name: spec for spec in (*timm_models.SPECS, *resnet.SPECS)}

# AtlasPatch's names and dims (reference §3), the kaiko names this project adds, and the contract's resnet50.
EXPECTED_DIMS = {
    "uni_v1": 1024,
    "uni_v2": 1536,
    "virchow_v1": 2560,
    "virchow_v2": 2560,
    "h_optimus_0": 1536,
    "h_optimus_1": 1536,
    "h0_mini": 1536,
    "prov_gigapath": 1536,
    "lunit_vit_small_patch8_dino": 384,
    "lunit_vit_small_patch16_dino": 384,
    "kaiko_vits16": 384,
    "kaiko_vits8": 384,
    "kaiko_vitb16": 768,
    "kaiko_vitb8": 768,
    "kaiko_vitl14": 1024,
    "resnet50": 1024,
}

# Published parameter counts (the architecture with its official file's keys) and how precisely each is published.
PUBLISHED_PARAMS = {
    "uni_v1": (304e6, 0.01),  # UNI README: ViT-L/16, 304M
    "uni_v2": (681e6, 0.005),  # UNI2-h: ViT-H/14-reg8, 681M
    "virchow_v1": (632e6, 0.005),  # Virchow paper: 632M
    "virchow_v2": (632e6, 0.005),  # Virchow2 paper: 632M
    "h_optimus_0": (1.1e9, 0.05),  # "1.1B parameters"
    "h_optimus_1": (1.1e9, 0.05),
    "prov_gigapath": (1.13e9, 0.01),  # tile encoder, ViT-g/14 ~1.13B
    "h0_mini": (86e6, 0.01),  # ViT-B/14, 86M
    "lunit_vit_small_patch8_dino": (22e6, 0.03),  # ViT-S, 22M
    "lunit_vit_small_patch16_dino": (22e6, 0.03),
    "kaiko_vits16": (22e6, 0.03),
    "kaiko_vits8": (22e6, 0.03),
    "kaiko_vitb16": (86e6, 0.01),
    "kaiko_vitb8": (86e6, 0.01),
    "kaiko_vitl14": (304e6, 0.01),
    "resnet50": (25_557_032, 0.0),  # torchvision's ResNet-50, exactly (the official file keeps fc)
}

# Tensor shapes implied by the published architectures (token grids, registers, SwiGLU widths, depth).
KNOWN_SHAPES = {
    "uni_v1": {
        "pos_embed": (1, 197, 1024),
        "patch_embed.proj.weight": (1024, 3, 16, 16),
        "blocks.23.ls2.gamma": (1024,),
    },
    "uni_v2": {"pos_embed": (1, 256, 1536), "reg_token": (1, 8, 1536), "blocks.23.mlp.fc1.weight": (8192, 1536)},
    "virchow_v1": {
        "pos_embed": (1, 257, 1280),
        "blocks.31.mlp.fc1.weight": (6832, 1280),
        "blocks.0.mlp.fc2.weight": (1280, 3416),
    },
    "virchow_v2": {"pos_embed": (1, 261, 1280), "reg_token": (1, 4, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "h_optimus_0": {"pos_embed": (1, 256, 1536), "reg_token": (1, 4, 1536), "blocks.39.mlp.fc1.weight": (8192, 1536)},
    "h_optimus_1": {"pos_embed": (1, 256, 1536), "reg_token": (1, 4, 1536), "blocks.39.mlp.fc2.weight": (1536, 4096)},
    "h0_mini": {"pos_embed": (1, 256, 768), "reg_token": (1, 4, 768), "blocks.11.mlp.fc1.weight": (4096, 768)},
    "prov_gigapath": {
        "pos_embed": (1, 197, 1536),
        "patch_embed.proj.weight": (1536, 3, 16, 16),
        "blocks.39.mlp.fc1.weight": (8192, 1536),
    },
    "lunit_vit_small_patch8_dino": {"pos_embed": (1, 785, 384), "patch_embed.proj.weight": (384, 3, 8, 8)},
    "lunit_vit_small_patch16_dino": {"pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16)},
    "kaiko_vitb8": {"pos_embed": (1, 785, 768), "blocks.11.mlp.fc1.weight": (3072, 768)},
    "kaiko_vitl14": {"pos_embed": (1, 256, 1024), "reg_token": (1, 4, 1024), "blocks.23.ls1.gamma": (1024,)},
    "resnet50": {
        "fc.weight": (1000, 2048),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.running_var": (2048,),
    },
}

# Tokens before the patch tokens (CLS + registers): what the CLS ⊕ mean heads must leave out of the mean.
PREFIX_TOKENS = {"virchow_v1": 1, "virchow_v2": 5, "h0_mini": 5, "uni_v2": 9, "h_optimus_0": 5, "kaiko_vitl14": 5}

SMALL = [  # file → load twice (model dir, HF cache) → 2 real patches; kaiko_vitl14 has its own test
    "lunit_vit_small_patch8_dino",
    "lunit_vit_small_patch16_dino",
    "kaiko_vits16",
    "kaiko_vits8",
    "kaiko_vitb16",
    "kaiko_vitb8",
    "h0_mini",
    "uni_v1",
    "resnet50",
]
GIANT = ["uni_v2", "virchow_v1", "virchow_v2", "h_optimus_0", "prov_gigapath"]  # h_optimus_1: same architecture
WEIGHT_SUFFIXES = {".bin", ".safetensors", ".pth"}


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty HF cache under tmp, offline, no model dir from the environment; big files and models freed after."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home / "hub"
    remove_weight_files(tmp_path)
    gc.collect()


def remove_weight_files(root: Path) -> None:
    """Checkpoints are GBs and pytest keeps the last runs' tmp dirs: delete them as soon as a test is done."""
    for path in root.rglob("*"):
        is_weights = path.suffix in WEIGHT_SUFFIXES or path.parent.name == "blobs"  # HF cache blobs have no suffix
        if is_weights and (path.is_file() or path.is_symlink()):
            path.unlink()


# --- helpers ------------------------------------------------------------------------------------------------------


def random_state(spec: PatchEncoderSpec) -> dict[str, torch.Tensor]:
    """The state dict of a freshly built (random-init) architecture, i.e. exactly the official key layout."""
    torch.manual_seed(0)
    return spec.architecture().state_dict()


def filled_state(spec: PatchEncoderSpec) -> dict[str, torch.Tensor]:
    """Same keys and shapes, built on the meta device and filled with small values: seconds, not minutes, at 1B."""
    with torch.device("meta"):
        module = spec.architecture()
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key.endswith("running_var"):
                tensor.fill_(1.0)
            elif tensor.is_floating_point():
                tensor.uniform_(-0.02, 0.02, generator=generator)
            else:
                tensor.zero_()
    return module.state_dict()


def write_upstream(spec: PatchEncoderSpec, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """The file as the upstream repository names and serialises it (``save_checkpoint`` goes by the suffix)."""
    assert spec.weights is not None
    return save_checkpoint(state, folder / spec.weights.filename)


def embed_patches(loaded: LoadedPatchEncoder, cmu_svs: Path, count: int) -> torch.Tensor:
    """Real slide patches at the encoder's recommended size, preprocessed the way the encoder expects."""
    spec = loaded.spec
    side = spec.recommended[0] if spec.recommended else spec.preprocess.input_size
    return loaded.embed(to_model_input(real_patches(cmu_svs, count, side), spec.preprocess))


def assert_features(features: torch.Tensor, count: int, dim: int) -> None:
    assert features.shape == (count, dim)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert features.abs().sum() > 0


def holds(loaded: LoadedPatchEncoder, probe: torch.Tensor) -> bool:
    """Whether the loaded model carries this exact tensor from the file (the load really happened)."""
    return any(
        value.shape == probe.shape and torch.allclose(value, probe, rtol=1e-6, atol=1e-7)
        for value in loaded.model.state_dict().values()
    )


def probe_of(state: dict[str, torch.Tensor]) -> torch.Tensor:
    if "pos_embed" in state:
        return state["pos_embed"].clone()
    if "bn1.running_var" in state:  # a CNN runs with bn1 folded into conv1: the folded weight must be there
        scale = state["bn1.weight"] / torch.sqrt(state["bn1.running_var"] + 1e-5)
        return (state["conv1.weight"] * scale[:, None, None, None]).clone()
    return state["conv1.weight"].clone()


# --- the table itself ---------------------------------------------------------------------------------------------


def test_names_and_dims_match_atlaspatch() -> None:
    assert {name: spec.dim for name, spec in SPECS.items()} == EXPECTED_DIMS
    registry = PatchEncoderRegistry(SPECS.values())  # names valid and unique
    assert sorted(registry.names()) == sorted(EXPECTED_DIMS)
    for spec in SPECS.values():
        assert spec.weights is not None and spec.weights.name == spec.name
        assert spec.preprocess.input_size == 224
        assert spec.recommended is not None and spec.family and spec.description


def test_importing_the_table_loads_neither_torch_nor_timm() -> None:
    code = (
        "import sys\n"
        "from atlaspatch.encoders.patch import resnet, timm_models\n"
        "assert timm_models.SPECS and resnet.SPECS\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_parameter_count_matches_the_published_one(name: str) -> None:
    with torch.device("meta"):
        module = SPECS[name].architecture()
    count = sum(parameter.numel() for parameter in module.parameters())
    published, tolerance = PUBLISHED_PARAMS[name]
    assert abs(count - published) <= tolerance * published, f"{name}: {count:,} parameters, published {published:,.0f}"


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_known_official_tensor_shapes(name: str) -> None:
    with torch.device("meta"):
        module = SPECS[name].architecture()
    state = module.state_dict()
    for key, shape in KNOWN_SHAPES[name].items():
        assert key in state, f"{name}: no {key}"
        assert tuple(state[key].shape) == shape, f"{name}: {key} {tuple(state[key].shape)} != {shape}"
    if name in PREFIX_TOKENS:
        assert module.num_prefix_tokens == PREFIX_TOKENS[name]
    if name != "resnet50":
        assert not any(key.startswith("head.") for key in state)  # num_classes=0: the files carry no classifier


@pytest.mark.parametrize("name", ["lunit_vit_small_patch16_dino", "h0_mini", "resnet50"])
def test_fresh_architecture_is_a_usable_random_init(name: str) -> None:
    """``architecture()`` skips timm's model-wide init: nothing may be left as uninitialised memory."""
    torch.manual_seed(0)
    module = SPECS[name].architecture().eval()
    assert all(torch.isfinite(value).all() and value.abs().max() < 100 for value in module.state_dict().values())
    with torch.inference_mode():
        assert torch.isfinite(SPECS[name].head(module)(torch.randn(1, 3, 224, 224))).all()


# --- small and medium models: random init, both resolution paths, two patches --------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_official_file_loads_from_model_dir_and_hf_cache(
    name: str, tmp_path: Path, isolated_hub: Path, cmu_svs: Path
) -> None:
    spec = SPECS[name]
    assert spec.weights is not None
    state = filled_state(spec)
    probe = probe_of(state)
    source = write_upstream(spec, state, tmp_path / "upstream")
    del state
    place_in_model_dir(tmp_path / "models", spec.weights.name, spec.weights.filename, source)
    place_in_hf_cache(isolated_hub, spec.weights.repo_id, spec.weights.filename, source)

    from_dir = load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    assert holds(from_dir, probe)
    assert from_dir.weights_source == spec.weights.source_id
    images = to_model_input(real_patches(cmu_svs, 2, spec.recommended[0]), spec.preprocess)
    features = from_dir.embed(images)
    assert_features(features, 2, spec.dim)
    assert_head_is_the_published_pooling(from_dir, images, features)
    from_dir_sha256 = from_dir.weights_sha256
    del from_dir
    gc.collect()

    from_cache = load_patch_encoder(spec, "cpu", "float32", None)  # HF_HUB_OFFLINE=1, cache under tmp
    assert from_cache.weights_sha256 == from_dir_sha256 == _blob_name(isolated_hub, spec)
    assert torch.equal(from_cache.embed(images), features)


def assert_head_is_the_published_pooling(
    loaded: LoadedPatchEncoder, images: torch.Tensor, features: torch.Tensor
) -> None:
    """CLS heads give timm's own pooled output (``model(x)``, what AtlasPatch and TRIDENT call); CLS ⊕ mean heads
    give the model cards' ``cat([out[:, 0], out[:, prefix:].mean(1)])`` with the published number of prefix tokens."""
    spec, trunk = loaded.spec, getattr(loaded.model, "trunk", None)
    if trunk is None:  # resnet50: see the TRIDENT-recipe test
        return
    with torch.inference_mode():
        if spec.head is timm_models.cls_head:
            expected = trunk(images)
        else:
            tokens = trunk.forward_features(images)
            expected = torch.cat([tokens[:, 0], tokens[:, PREFIX_TOKENS[spec.name] :].mean(dim=1)], dim=-1)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def _blob_name(cache: Path, spec: PatchEncoderSpec) -> str:
    assert spec.weights is not None
    repo = cache / f"models--{spec.weights.repo_id.replace('/', '--')}"
    return next((repo / "blobs").iterdir()).name


def test_resnet50_matches_tridents_features_only_recipe(tmp_path: Path, cmu_svs: Path) -> None:
    """Our full-model + truncating head = timm ``features_only=True, out_indices=[3]`` + AdaptiveAvgPool2d(1)."""
    spec = SPECS["resnet50"]
    state = random_state(spec)
    write_upstream(spec, state, tmp_path / "models" / "resnet50")
    loaded = load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    reference = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3]).eval()
    missing, _ = reference.load_state_dict(state, strict=False)
    assert not missing
    images = to_model_input(real_patches(cmu_svs, 2, 256), spec.preprocess)
    with torch.inference_mode():
        expected = torch.nn.functional.adaptive_avg_pool2d(reference(images)[0], 1).flatten(1)
    assert expected.shape == (2, 1024)
    torch.testing.assert_close(loaded.embed(images), expected, rtol=1e-5, atol=1e-5)


def test_convolutional_encoders_run_with_their_batchnorms_folded(tmp_path: Path) -> None:
    """resnet50 is loaded with every BatchNorm folded into its convolution (the TRIDENT-recipe test above checks
    the features against the unfolded timm model), in channels-last memory."""
    spec = SPECS["resnet50"]
    write_upstream(spec, random_state(spec), tmp_path / "models" / "resnet50")
    loaded = load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    modules = list(loaded.model.modules())
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in modules)
    assert sum(isinstance(module, torch.nn.Conv2d) for module in modules) == 43  # stem + 3 + 4 + 6 blocks
    assert loaded.model.get_parameter("0.weight").is_contiguous(memory_format=torch.channels_last)


def test_a_model_fx_cannot_trace_is_used_unfolded() -> None:
    from atlaspatch.encoders.patch.loading import fold_batch_norms

    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.conv(x))
            return x if x.sum() > 0 else -x  # control flow on a value: not symbolically traceable

    model = DataDependent().eval()
    assert fold_batch_norms(model) is model


def test_kaiko_vitl14_file_on_the_518px_grid_gives_the_518px_models_features(tmp_path: Path, cmu_svs: Path) -> None:
    """kaiko's ViT-L/14 is published on DINOv2's 518-px grid (37×37 pos_embed); the reader resamples it the way
    the 518-px ``dynamic_img_size`` model does at 224 px, so the features are that model's."""
    spec = SPECS["kaiko_vitl14"]
    assert spec.weights is not None
    torch.manual_seed(0)
    reference = timm.create_model(
        "vit_large_patch14_reg4_dinov2",
        pretrained=False,
        num_classes=0,
        img_size=518,
        dynamic_img_size=True,
        weight_init="skip",
    ).eval()
    timm_models.init_token_embeddings(reference)
    assert tuple(reference.pos_embed.shape) == (1, 37 * 37, 1024)
    write_upstream(spec, reference.state_dict(), tmp_path / "models" / spec.name)
    images = to_model_input(real_patches(cmu_svs, 2, spec.recommended[0]), spec.preprocess)
    with torch.inference_mode():
        expected = reference(images)
    del reference
    gc.collect()

    features = load_patch_encoder(spec, "cpu", "float32", tmp_path / "models").embed(images)
    assert_features(features, 2, 1024)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_pos_embed_reader_leaves_a_file_on_the_model_grid_alone(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    read = timm_models.with_pos_embed_grid(16)
    on_grid = {"pos_embed": torch.randn(1, 256, 8), "cls_token": torch.randn(1, 1, 8)}
    save_file(on_grid, str(tmp_path / "on_grid.safetensors"))
    assert all(torch.equal(read(tmp_path / "on_grid.safetensors")[key], on_grid[key]) for key in on_grid)
    save_file({"pos_embed": torch.randn(1, 37 * 37, 8)}, str(tmp_path / "dinov2_grid.safetensors"))
    assert read(tmp_path / "dinov2_grid.safetensors")["pos_embed"].shape == (1, 256, 8)
    save_file({"pos_embed": torch.randn(1, 197, 8)}, str(tmp_path / "not_square.safetensors"))  # left for strict
    assert read(tmp_path / "not_square.safetensors")["pos_embed"].shape == (1, 197, 8)


# --- wrong files: one line, never a traceback ----------------------------------------------------------------------


def test_checkpoint_of_another_architecture_is_a_one_line_error(tmp_path: Path) -> None:
    """A plain DINOv2 ViT-B/14-reg4 (GELU MLP, 3072 wide) is not H0-mini (SwiGLU, 4096 packed)."""
    spec = SPECS["h0_mini"]
    with torch.device("meta"):
        other = timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=224)
    other = other.to_empty(device="cpu")
    write_upstream(spec, other.state_dict(), tmp_path / "models" / spec.name)
    with pytest.raises(WeightsError) as caught:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith("h0_mini weights at") and "do not fit the h0_mini architecture" in message
    assert "mlp.fc1.weight" in message  # says which tensor does not fit


def test_lunit_patch16_file_given_for_patch8_is_a_one_line_error(tmp_path: Path) -> None:
    spec = SPECS["lunit_vit_small_patch8_dino"]
    write_upstream(spec, random_state(SPECS["lunit_vit_small_patch16_dino"]), tmp_path / "models" / spec.name)
    with pytest.raises(WeightsError, match=r"do not fit the lunit_vit_small_patch8_dino architecture") as caught:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    assert "\n" not in str(caught.value)


def test_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    spec = SPECS["uni_v1"]
    assert spec.weights is not None
    path = tmp_path / "models" / spec.name / spec.weights.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>Access to model MahmoodLab/UNI is restricted</html>")
    with pytest.raises(WeightsError, match=r"^uni_v1 weights at .* are unreadable") as caught:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    assert "\n" not in str(caught.value)


def test_missing_file_offline_names_the_repository_and_licence_step(tmp_path: Path) -> None:
    spec = SPECS["virchow_v2"]
    with pytest.raises(WeightsError) as caught:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    message = str(caught.value)
    assert "\n" not in message
    assert "paige-ai/Virchow2/pytorch_model.bin" in message and "HF_HUB_OFFLINE=1" in message
    assert "accept the licence (CC-BY-NC-ND-4.0) at https://huggingface.co/paige-ai/Virchow2" in message


# --- ViT-H / ViT-g: meta-filled file, model-dir path, one patch ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", GIANT)
def test_giant_official_file_loads_and_embeds(name: str, tmp_path: Path, cmu_svs: Path) -> None:
    spec = SPECS[name]
    state = filled_state(spec)
    probe = state["cls_token"].clone()
    write_upstream(spec, state, tmp_path / "models" / spec.name)
    del state
    gc.collect()
    loaded = load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    assert holds(loaded, probe)
    assert_features(embed_patches(loaded, cmu_svs, 1), 1, spec.dim)


def test_hoptimus_1_is_hoptimus_0_under_its_own_name() -> None:
    """H-optimus-1 is the H-optimus-0 architecture (ViT-g/14 reg4) with other weights: same keys and shapes, same
    head and preprocessing, so the H-optimus-0 load above covers it; only the repository differs."""
    zero, one = SPECS["h_optimus_0"], SPECS["h_optimus_1"]
    with torch.device("meta"):
        shapes = [
            {key: tuple(value.shape) for key, value in spec.architecture().state_dict().items()} for spec in (zero, one)
        ]
    assert shapes[0] == shapes[1]
    assert (zero.head, zero.preprocess, zero.dim, zero.checkpoint) == (
        one.head,
        one.preprocess,
        one.dim,
        one.checkpoint,
    )
    assert zero.weights is not None and one.weights is not None
    assert (one.weights.repo_id, one.weights.filename, one.weights.gated) == (
        "bioptimus/H-optimus-1",
        "pytorch_model.bin",
        True,
    )
