"""Test helpers: small model repositories in the layouts of the official TITAN and PRISM Hugging Face repos.

The code written into them is our own (we have never seen the official code): tiny models with the official file
names, class names, method signatures and input/output widths (TITAN 768 → 768, PRISM 2560 → 1280), saved with
seeded random weights as ``model.safetensors``. They let the tests run the production remote-code loader offline.

- TITAN fixture: an MLP patch embedding, a 2-D sin-cos position code of the patch grid (x and y in separate
  channel halves) and a 2-D ALiBi distance bias in every attention layer, CLS readout, 768-d output. The grid is
  ``floor((coords - coords.min) / patch_size_lv0)``, so a wrong ``patch_size_lv0`` or swapped x/y changes the
  output. Features that are not [B, N, 768], coords that are not integer, or a patch size that is not an int raise.
- PRISM fixture: a Perceiver resampler (cross-attention of learned latents to the 2560-d tiles, GEGLU feed-forwards,
  then self-attention) giving ``image_latents`` [B, L, 1280] and ``image_embedding`` [B, 1280], plus a real
  ``text_decoder`` (a tiny transformers ``BioGptForCausalLM``) whose weights are in the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITAN_FILES = ("config.json", "configuration_titan.py", "modeling_titan.py", "titan_layers.py", "model.safetensors")
PRISM_FILES = ("config.json", "configuring_prism.py", "modeling_prism.py", "model.safetensors")

CONFIGURATION_TITAN = '''"""Configuration of the test fixture TITAN (tiny; real input and output widths)."""

from transformers import PretrainedConfig


class TitanConfig(PretrainedConfig):
    model_type = "titan"

    def __init__(
        self,
        patch_feature_dim=768,
        hidden_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2,
        embed_dim=768,
        **kwargs,
    ):
        self.patch_feature_dim = patch_feature_dim
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.embed_dim = embed_dim
        super().__init__(**kwargs)
'''

TITAN_LAYERS = '''"""Test fixture TITAN layers: a helper module that modeling_titan.py imports relatively."""

import math

import torch
from torch import nn


def grid_of(coords, patch_size_lv0):
    """[B, N, 2] level-0 (x, y) → integer grid (column, row) from the slide's top-left patch."""
    origin = coords.min(dim=1, keepdim=True).values
    return torch.div(coords - origin, patch_size_lv0, rounding_mode="floor")


def sincos_of(grid, dim):
    """x in the first half of the channels, y in the second: swapping them changes the code."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(100.0) * torch.arange(quarter, device=grid.device) / quarter)
    x = grid[..., 0:1].float() * freqs
    y = grid[..., 1:2].float() * freqs
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)


def alibi_slopes(num_heads):
    return torch.tensor([2.0 ** (-(head + 1)) for head in range(num_heads)])


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias):
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
        out = scores.softmax(dim=-1).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x, bias):
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))
'''

MODELING_TITAN = '''"""Test fixture TITAN: a tiny ViT over a slide's 2-D patch grid (2-D ALiBi, sin-cos grid code)."""

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_titan import TitanConfig
from .titan_layers import Block, alibi_slopes, grid_of, sincos_of


class Titan(PreTrainedModel):
    config_class = TitanConfig

    def __init__(self, config):
        super().__init__(config)
        dim = config.hidden_dim
        self.patch_embed = nn.Sequential(
            nn.Linear(config.patch_feature_dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.embed_dim)
        self.register_buffer("slopes", alibi_slopes(config.num_heads), persistent=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def alibi_bias(self, grid):
        """[B, heads, 1 + N, 1 + N]: minus slope × Euclidean grid distance; the CLS token sees every patch."""
        distance = torch.cdist(grid.float(), grid.float())
        bias = -self.slopes[None, :, None, None] * distance[:, None]
        return nn.functional.pad(bias, (1, 0, 1, 0))

    def encode_slide_from_patch_features(self, patch_features, patch_coords, patch_size_lv0):
        if patch_features.ndim != 3 or patch_features.shape[-1] != self.config.patch_feature_dim:
            raise ValueError(
                f"patch_features must be [batch, patches, {self.config.patch_feature_dim}], "
                f"got {list(patch_features.shape)}"
            )
        if patch_coords.dtype.is_floating_point or patch_coords.dtype == torch.bool:
            raise TypeError(f"patch_coords must be an integer tensor, got {patch_coords.dtype}")
        if patch_coords.shape != (*patch_features.shape[:2], 2):
            raise ValueError(f"patch_coords must be [batch, patches, 2], got {list(patch_coords.shape)}")
        if not isinstance(patch_size_lv0, int) or isinstance(patch_size_lv0, bool):
            raise TypeError(f"patch_size_lv0 must be an int, got {type(patch_size_lv0).__name__}")
        grid = grid_of(patch_coords, patch_size_lv0)
        x = self.patch_embed(patch_features) + sincos_of(grid, self.config.hidden_dim).to(patch_features.dtype)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        bias = self.alibi_bias(grid)
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.norm(x)[:, 0])
'''

CONFIGURING_PRISM = '''"""Configuration of the test fixture PRISM (tiny; real tile and embedding widths)."""

from transformers import PretrainedConfig


class PrismConfig(PretrainedConfig):
    model_type = "prism"

    def __init__(self, biogpt_config=None, perceiver_config=None, biogpt_context_dim=1280, dim_latents=16, **kwargs):
        self.biogpt_config = dict(biogpt_config or {})
        self.perceiver_config = dict(perceiver_config or {})
        self.biogpt_context_dim = biogpt_context_dim
        self.dim_latents = dim_latents
        super().__init__(**kwargs)
'''

MODELING_PRISM = '''"""Test fixture PRISM: a tiny Perceiver resampler over tiles, plus a tiny BioGPT decoder."""

import math

import torch
from torch import nn
from transformers import BioGptConfig, BioGptForCausalLM, PreTrainedModel

from .configuring_prism import PrismConfig


class GEGLU(nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim * mult)
        self.down = nn.Linear(dim * mult, dim)

    def forward(self, x):
        value, gate = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(value * nn.functional.gelu(gate))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def split(self, x):
        return x.reshape(*x.shape[:2], self.heads, -1).transpose(1, 2)

    def forward(self, queries, context, mask=None):
        q = self.split(self.q(self.norm_q(queries)))
        k, v = (self.split(t) for t in self.kv(self.norm_kv(context)).chunk(2, dim=-1))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = (scores.softmax(dim=-1).to(v.dtype) @ v).transpose(1, 2).reshape(*queries.shape)
        return self.out(out)


def layer(dim, heads, mlp_mult):
    return nn.ModuleList([Attention(dim, heads), GEGLU(dim, mlp_mult)])


class PerceiverResampler(nn.Module):
    def __init__(
        self,
        latent_seq=8,
        latent_dim=1280,
        context_dim=2560,
        inner_dim=32,
        mhsa_heads=4,
        xattn_heads=1,
        perceiver_depth=2,
        transformer_depth=1,
        mlp_mult=1,
        mlp_activation="geglu",
        **unused,
    ):
        super().__init__()
        if mlp_activation != "geglu":
            raise ValueError(f"unsupported mlp_activation {mlp_activation!r}")
        self.context_proj = nn.Linear(context_dim, inner_dim)
        self.latents = nn.Parameter(torch.zeros(latent_seq, inner_dim))
        self.cross = nn.ModuleList([layer(inner_dim, xattn_heads, mlp_mult) for _ in range(perceiver_depth)])
        self.transformer = nn.ModuleList([layer(inner_dim, mhsa_heads, mlp_mult) for _ in range(transformer_depth)])
        self.norm = nn.LayerNorm(inner_dim)
        self.to_latent = nn.Linear(inner_dim, latent_dim)
        self.embedding_norm = nn.LayerNorm(latent_dim)

    def forward(self, tiles, mask=None):
        context = self.context_proj(tiles)
        x = self.latents.to(context.dtype).expand(tiles.shape[0], -1, -1)
        for attention, feed_forward in self.cross:
            x = x + attention(x, context, mask)
            x = x + feed_forward(x)
        for attention, feed_forward in self.transformer:
            x = x + attention(x, x)
            x = x + feed_forward(x)
        latents = self.to_latent(self.norm(x))
        return latents, self.embedding_norm(latents.mean(dim=1))


class Prism(PreTrainedModel):
    config_class = PrismConfig

    def __init__(self, config):
        super().__init__(config)
        self.image_resampler = PerceiverResampler(**config.perceiver_config)
        self.text_decoder = BioGptForCausalLM(BioGptConfig(**config.biogpt_config))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def slide_representations(self, tile_embeddings, tile_mask=None):
        context_dim = self.image_resampler.context_proj.in_features
        if tile_embeddings.ndim != 3 or tile_embeddings.shape[-1] != context_dim:
            shape = list(tile_embeddings.shape)
            raise ValueError(f"tile_embeddings must be [batch, tiles, {context_dim}], got {shape}")
        if tile_mask is not None:
            tile_mask = tile_mask.bool()
        latents, embedding = self.image_resampler(tile_embeddings, tile_mask)
        return {"image_embedding": embedding, "image_latents": latents}
'''

TITAN_CONFIG: dict[str, Any] = {
    "architectures": ["Titan"],
    "auto_map": {"AutoConfig": "configuration_titan.TitanConfig", "AutoModel": "modeling_titan.Titan"},
    "model_type": "titan",
    "patch_feature_dim": 768,
    "hidden_dim": 32,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2,
    "embed_dim": 768,
    "torch_dtype": "float32",
}

PRISM_CONFIG: dict[str, Any] = {
    "architectures": ["Prism"],
    "auto_map": {"AutoConfig": "configuring_prism.PrismConfig", "AutoModel": "modeling_prism.Prism"},
    "model_type": "prism",
    "biogpt_context_dim": 1280,
    "dim_latents": 16,
    "biogpt_config": {
        "model_type": "biogpt",
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "pad_token_id": 1,
    },
    "perceiver_config": {
        "latent_seq": 8,
        "latent_dim": 1280,
        "context_dim": 2560,
        "inner_dim": 32,
        "mhsa_heads": 4,
        "xattn_heads": 1,
        "perceiver_depth": 2,
        "transformer_depth": 1,
        "mlp_mult": 1,
        "mlp_activation": "geglu",
    },
    "torch_dtype": "float32",
}


# --- writing a repository -----------------------------------------------------------------------------------------


def write_titan_repo(directory: Path, seed: int = 0) -> Path:
    """A TITAN-layout repository: config.json, configuration_titan.py, modeling_titan.py (+ a helper module it
    imports relatively, titan_layers.py), model.safetensors."""
    code = {
        "configuration_titan.py": CONFIGURATION_TITAN,
        "modeling_titan.py": MODELING_TITAN,
        "titan_layers.py": TITAN_LAYERS,
    }
    return _write_repo(Path(directory), code, TITAN_CONFIG, seed)


def write_prism_repo(directory: Path, seed: int = 0) -> Path:
    """A PRISM-layout repository (config.json, configuring_prism.py, modeling_prism.py, model.safetensors)."""
    code = {"configuring_prism.py": CONFIGURING_PRISM, "modeling_prism.py": MODELING_PRISM}
    return _write_repo(Path(directory), code, PRISM_CONFIG, seed)


def _write_repo(directory: Path, code: dict[str, str], config: dict[str, Any], seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in code.items():
        (directory / name).write_text(text, encoding="utf-8")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    model = randomized(build_fixture_model(directory), seed)
    save_safetensors(model.state_dict(), directory / "model.safetensors")
    return directory


def randomized(model: Any, seed: int) -> Any:
    """Seeded random numbers in every parameter (norm weights around 1), so every key matters to the output."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / param.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(1.0 + 0.1 * noise)
    return model


def save_safetensors(state: dict[str, Any], path: Path) -> Path:
    """``model.safetensors`` as transformers writes it (tied tensors are stored once each, as separate copies)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().clone().contiguous() for key, value in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# --- the fixture model, independently of the production loader ----------------------------------------------------


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ inside the repository
    try:
        yield
    finally:
        sys.dont_write_bytecode = previous


def import_repo_module(directory: Path, module: str) -> types.ModuleType:
    """A repository's code module, imported straight from its directory as a package of its own (not via
    transformers' dynamic modules): the reference the production loader is checked against."""
    directory = Path(directory)
    sources = b"".join(path.read_bytes() for path in sorted(directory.glob("*.py")))
    package = "slide_repo_" + hashlib.sha256(str(directory.absolute()).encode() + sources).hexdigest()[:16]
    if package not in sys.modules:
        holder = types.ModuleType(package)
        holder.__path__ = [str(directory)]
        sys.modules[package] = holder
    with _no_bytecode():
        return importlib.import_module(f"{package}.{module}")


def build_fixture_model(directory: Path) -> Any:
    """The repository's model class built from its config.json (default init, all submodules)."""
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    classes = []
    for key in ("AutoConfig", "AutoModel"):
        module, name = config["auto_map"][key].split(".")
        classes.append(getattr(import_repo_module(directory, module), name))
    config_class, model_class = classes
    return model_class(config_class.from_pretrained(str(directory)))


def load_fixture_model(directory: Path) -> Any:
    """The whole fixture model with the repository's weights, loaded strictly (text decoder included), eval, CPU."""
    from safetensors.torch import load_file

    model = build_fixture_model(directory)
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")), strict=True)
    return model.eval()
