"""Heads: what turns a loaded trunk into the embedding the authors publish, ``(B, 3, H, W) -> (B, dim)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ViTTokenPool(nn.Module):
    """CLS token, or CLS ⊕ mean of the patch tokens (register tokens excluded), of a timm ViT's final tokens."""

    def __init__(self, trunk: nn.Module, mode: str = "cls") -> None:
        super().__init__()
        if mode not in ("cls", "cls_mean"):
            raise ValueError(f"unknown pooling mode {mode!r}")
        self.trunk = trunk
        self.mode = mode
        self.prefix = int(getattr(trunk, "num_prefix_tokens", 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(images)
        cls = tokens[:, 0]
        if self.mode == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.prefix :].mean(dim=1)], dim=-1)


def vit_cls(trunk: nn.Module) -> nn.Module:
    return ViTTokenPool(trunk, "cls")


def vit_cls_mean(trunk: nn.Module) -> nn.Module:
    return ViTTokenPool(trunk, "cls_mean")


class Flatten(nn.Module):
    """Calls the module and flattens anything above 2-D (e.g. (B, D, 1, 1) → (B, D))."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images).flatten(1)


def flattened(module: nn.Module) -> nn.Module:
    return Flatten(module)


HeadFactory = Callable[[nn.Module], nn.Module]
