"""CONCH v1.5 and the encoders published as transformers checkpoints (Phikon, Phikon-v2, Hibou-B/L, Midnight).

Every encoder loads a random-init checkpoint written in the upstream on-disk format through the production path
(``--model-dir`` layout, then the Hugging Face cache with ``HF_HUB_OFFLINE=1``) and embeds real CMU patches.

References that are not our own code:

- transformers-format encoders: the real ``ViTModel`` / ``Dinov2Model`` / ``Dinov2WithRegistersModel`` is built,
  ``save_pretrained`` writes the file our converter reads, and our timm embeddings must equal the transformers
  model's (CLS of ``last_hidden_state``, ``pooler_output``, CLS ⊕ mean) on the same inputs. Midnight's file holds
  a 37×37 position grid (DINOv2-g's 518 px config), so transformers' own interpolation to 16×16 is checked too;
- CONCH v1.5: the file uses the official key names and 14×14 grid; the reference forward transcribes TITAN's /
  TRIDENT's code (runtime DINO-style interpolation to 28×28, einsum attentional pooling with max-subtraction).

Large models are built on the meta device and filled with random numbers instead of their default init.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from atlaspatch.encoders.patch import conch, hf_models  # noqa: E402
from atlaspatch.encoders.patch.loading import load_patch_encoder  # noqa: E402
from atlaspatch.encoders.patch.spec import PatchEncoderSpec  # noqa: E402
from atlaspatch.encoders.patch.transforms import to_model_input  # noqa: E402
from atlaspatch.errors import WeightsError  # noqa: E402
from checkpoints import place_in_hf_cache, place_in_model_dir, real_patches, save_checkpoint  # noqa: E402

SPECS: dict[str, PatchEncoderSpec] = {spec.name: spec for spec in (*conch.SPECS, *hf_models.SPECS)}

EXPECTED = {  # name: (dim, repo, file, gated)
    "conch_v15": (768, "MahmoodLab/conchv1_5", "pytorch_model_vision.bin", True),
    "phikon_v1": (768, "owkin/phikon", "model.safetensors", False),
    "phikon_v2": (1024, "owkin/phikon-v2", "model.safetensors", False),
    "hibou_b": (768, "histai/hibou-b", "model.safetensors", False),
    "hibou_l": (1024, "histai/hibou-L", "model.safetensors", True),
    "midnight": (3072, "kaiko-ai/midnight", "model.safetensors", False),
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache under tmp, offline, no model dir from the environment; returns the cache dir."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random numbers in every parameter (biases and norm weights too, so their mapping is exercised)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.normal_(0.0, 0.02)
            if param.ndim == 1 and not name.endswith("bias"):
                param.mul_(5.0).add_(1.0)  # norm weights / layer scales around 1
    return module


def images_for(spec: PatchEncoderSpec, cmu_svs: Path) -> torch.Tensor:
    assert spec.recommended is not None
    return to_model_input(real_patches(cmu_svs, 2, spec.recommended[0]), spec.preprocess)


def embed_both_ways(
    spec: PatchEncoderSpec, weights: Path, hub: Path, tmp_path: Path, images: torch.Tensor
) -> torch.Tensor:
    """Features through the model-dir layout, then through the offline HF cache (one model in memory at a time)."""
    assert spec.weights is not None
    model_dir = tmp_path / "model_dir"
    place_in_model_dir(model_dir, spec.weights.name, spec.weights.filename, weights)
    encoder = load_patch_encoder(spec, "cpu", "float32", model_dir)
    from_model_dir = encoder.embed(images)
    del encoder
    gc.collect()
    place_in_hf_cache(hub, spec.weights.repo_id, spec.weights.filename, weights)
    encoder = load_patch_encoder(spec, "cpu", "float32", None)
    from_cache = encoder.embed(images)
    del encoder
    gc.collect()
    for features in (from_model_dir, from_cache):
        assert features.shape == (images.shape[0], spec.dim)
        assert features.dtype == torch.float32
        assert torch.isfinite(features).all()
    assert torch.equal(from_model_dir, from_cache)
    return from_model_dir


# --- the table ---------------------------------------------------------------------------------------------------


def test_table_names_dims_and_sources() -> None:
    assert set(SPECS) == set(EXPECTED)
    for name, (dim, repo, filename, gated) in EXPECTED.items():
        spec = SPECS[name]
        assert spec.weights is not None
        assert (spec.dim, spec.weights.repo_id, spec.weights.filename, spec.weights.gated) == (
            dim,
            repo,
            filename,
            gated,
        )
        assert spec.weights.name == name  # the model-dir subfolder
        assert spec.weights.licence and spec.description and spec.family and spec.recommended
        assert "\n" not in spec.description
    assert SPECS["conch_v15"].recommended == (512, 20)
    assert SPECS["conch_v15"].preprocess.input_size == 448 and SPECS["conch_v15"].preprocess.resize == 448
    assert SPECS["midnight"].preprocess.mean == (0.5, 0.5, 0.5)
    assert SPECS["hibou_l"].preprocess.mean == (0.7068, 0.5755, 0.722)
    assert SPECS["hibou_l"].preprocess.interpolation == "bicubic"


def test_importing_the_tables_imports_neither_torch_nor_timm() -> None:
    code = (
        "import sys; import atlaspatch.encoders.patch.conch, atlaspatch.encoders.patch.hf_models; "
        "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- CONCH v1.5 --------------------------------------------------------------------------------------------------


def official_conch_layout() -> torch.nn.Module:
    """TITAN's / TRIDENT's module on the meta device: the trunk at timm's default 224 px (14×14 grid)."""
    from timm.models.vision_transformer import VisionTransformer

    trunk = VisionTransformer(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, init_values=1.0, num_classes=0, device="meta"
    )
    with torch.device("meta"):
        return conch.conch_v15_tower(trunk)


@pytest.fixture(scope="module")
def conch_official(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random CONCH v1.5 in the official layout and its ``pytorch_model_vision.bin`` (official key names)."""
    module = randomize(official_conch_layout().to_empty(device="cpu"), seed=15).eval()
    path = tmp_path_factory.mktemp("conch") / "pytorch_model_vision.bin"
    save_checkpoint(module.state_dict(), path)
    return module, path


def test_conch_v15_official_layout_and_parameter_count() -> None:
    module = official_conch_layout()
    shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    assert shapes["trunk.pos_embed"] == (1, 197, 1024)
    assert shapes["trunk.blocks.23.ls2.gamma"] == (1024,)
    assert shapes["attn_pool_contrast.query"] == (1, 768)
    assert shapes["attn_pool_contrast.to_kv.weight"] == (1536, 1024)
    assert shapes["attn_pool_contrast.ln_k.weight"] == (1024,)
    assert shapes["ln_contrast.weight"] == (768,)
    assert not any(key.startswith(("trunk.head", "trunk.fc_norm")) for key in shapes)
    assert all(not key.endswith("bias") for key in shapes if key.startswith("attn_pool_contrast.to_"))
    trunk = sum(p.numel() for p in module.trunk.parameters())
    pooler = sum(p.numel() for name, p in module.named_parameters() if not name.startswith("trunk."))
    assert abs(trunk - 304e6) / 304e6 < 0.01  # ViT-L/16 at 224 px, "304M" (UNI's README for the same trunk)
    # query, ln_k, ln_q, to_q, to_kv, to_out (no biases), ln_contrast
    assert pooler == 768 + 2 * 1024 + 2 * 768 + 768 * 768 + 1024 * 1536 + 768 * 768 + 2 * 768


def official_conch_forward(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """TITAN ``conch_v1_5.py`` / TRIDENT ``conchv1_5.py`` forward, transcribed: the trunk interpolates its
    14×14 grid per call (bicubic, scale_factor with the +0.1 offset) and the pooler is written with einsum."""
    trunk, pool = module.trunk, module.attn_pool_contrast
    x = trunk.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = torch.cat([trunk.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    n = trunk.pos_embed.shape[1] - 1
    w0 = images.shape[2] // 16 + 0.1
    h0 = images.shape[3] // 16 + 0.1
    grid = trunk.pos_embed[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    pos = torch.cat([trunk.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])], dim=1)
    tokens = trunk.norm(trunk.blocks(x + pos))[:, None]  # b 1 n d
    q = pool.to_q(pool.ln_q(pool.query.expand(tokens.shape[0], 1, -1, -1)))
    k, v = pool.to_kv(pool.ln_k(tokens)).chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (8, 96)).permute(0, 3, 1, 2, 4) for t in (q, k, v))  # b h t n d
    sim = torch.einsum("...id,...jd->...ij", q * 96**-0.5, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("...ij,...jd->...id", attn, v).permute(0, 2, 3, 1, 4).flatten(3)  # b t n (h d)
    return module.ln_contrast(pool.to_out(out).squeeze(1)[:, 0])


def test_conch_v15_official_file_strict_load_both_ways(
    conch_official: tuple[torch.nn.Module, Path], cmu_svs: Path, hub: Path, tmp_path: Path
) -> None:
    module, path = conch_official
    spec = SPECS["conch_v15"]
    assert set(torch.load(path, weights_only=True)) == set(module.state_dict())  # written with the official names
    images = images_for(spec, cmu_svs)
    assert images.shape == (2, 3, 448, 448)
    features = embed_both_ways(spec, path, hub, tmp_path, images)
    with torch.inference_mode():
        expected = official_conch_forward(module, images)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "content",
    [
        {"cls_token": torch.zeros(1, 1, 1024), "pos_embed": torch.zeros(1, 197, 1024)},  # a bare ViT, no "trunk."
        b"not a checkpoint at all",
    ],
    ids=["wrong-architecture", "corrupt"],
)
def test_conch_v15_wrong_file_is_a_one_line_weights_error(content: dict | bytes, hub: Path, tmp_path: Path) -> None:
    spec = SPECS["conch_v15"]
    assert spec.weights is not None
    target = tmp_path / "models" / "conch_v15" / "pytorch_model_vision.bin"
    if isinstance(content, bytes):
        target.parent.mkdir(parents=True)
        target.write_bytes(content)
    else:
        save_checkpoint(content, target)
    with pytest.raises(WeightsError) as error:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    message = str(error.value)
    assert "\n" not in message and "conch_v15" in message


# --- transformers-format encoders --------------------------------------------------------------------------------


def cls_token(output: Any) -> torch.Tensor:
    return output.last_hidden_state[:, 0]


def pooler(output: Any) -> torch.Tensor:
    return output.pooler_output


def cls_mean(output: Any) -> torch.Tensor:
    tokens = output.last_hidden_state
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)


def transformers_model(name: str) -> tuple[torch.nn.Module, Callable]:
    """The upstream architecture of each encoder, as its config.json describes it, with its pooling."""
    tf = pytest.importorskip("transformers")
    dinov2 = {"layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "image_size": 224}
    if name == "phikon_v1":
        config = tf.ViTConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=16,
            layer_norm_eps=1e-6,
            qkv_bias=True,
        )
        return tf.ViTModel(config), cls_token  # with its (unused) pooler, as the file has
    if name == "phikon_v2":
        config = tf.Dinov2Config(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, **dinov2
        )
        return tf.Dinov2Model(config), cls_token
    if name in ("hibou_b", "hibou_l"):
        size = {"hibou_b": (768, 12, 12), "hibou_l": (1024, 24, 16)}[name]
        config = tf.Dinov2WithRegistersConfig(
            hidden_size=size[0],
            num_hidden_layers=size[1],
            num_attention_heads=size[2],
            patch_size=14,
            num_register_tokens=4,
            use_swiglu_ffn=True,
            **dinov2,
        )
        return tf.Dinov2WithRegistersModel(config), pooler
    assert name == "midnight"
    config = tf.Dinov2Config(
        hidden_size=1536,
        num_hidden_layers=40,
        num_attention_heads=24,
        patch_size=14,
        use_swiglu_ffn=True,
        **{**dinov2, "image_size": 518},
    )
    return tf.Dinov2Model(config), cls_mean


def check_against_transformers(name: str, cmu_svs: Path, hub: Path, tmp_path: Path) -> None:
    spec = SPECS[name]
    images = images_for(spec, cmu_svs)
    with torch.device("meta"):
        model, pooling = transformers_model(name)
    model = randomize(model.to_empty(device="cpu"), seed=len(name)).eval()
    with torch.inference_mode():
        expected = pooling(model(pixel_values=images))
    model.save_pretrained(tmp_path / "hf")  # the real on-disk format: model.safetensors (+ config.json)
    del model
    gc.collect()
    weights = tmp_path / "hf" / "model.safetensors"
    assert weights.is_file()
    features = embed_both_ways(spec, weights, hub, tmp_path, images)
    assert expected.shape == features.shape
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["phikon_v1", "phikon_v2", "hibou_b", "hibou_l"])
def test_equals_transformers_on_real_patches(name: str, cmu_svs: Path, hub: Path, tmp_path: Path) -> None:
    check_against_transformers(name, cmu_svs, hub, tmp_path)


@pytest.mark.slow
def test_midnight_vit_g_equals_transformers_on_real_patches(cmu_svs: Path, hub: Path, tmp_path: Path) -> None:
    check_against_transformers("midnight", cmu_svs, hub, tmp_path)


def test_transformers_file_of_another_model_is_a_one_line_weights_error(hub: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    small = tf.Dinov2Model(tf.Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, patch_size=16))
    small.save_pretrained(tmp_path / "hf")
    spec = SPECS["phikon_v2"]
    place_in_model_dir(tmp_path / "models", "phikon_v2", "model.safetensors", tmp_path / "hf" / "model.safetensors")
    with pytest.raises(WeightsError) as error:
        load_patch_encoder(spec, "cpu", "float32", tmp_path / "models")
    message = str(error.value)
    assert "\n" not in message and "phikon_v2" in message and "do not fit" in message
