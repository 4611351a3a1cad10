"""Patch encoders by name: the built-in table plus whatever ``--feature-plugin`` files register."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...errors import ConfigError
from .spec import PatchEncoderSpec


def builtin_specs() -> list[PatchEncoderSpec]:
    """Every built-in encoder, one family module at a time (the modules import torch/timm lazily)."""
    from . import conch, hf_models, resnet, timm_models

    specs: list[PatchEncoderSpec] = []
    for family in (conch, timm_models, hf_models, resnet):
        specs.extend(family.SPECS)
    return specs


class PatchEncoderRegistry:
    """Name → spec. Plugins add to it through :meth:`register` (see docs/feature-plugins.md)."""

    def __init__(self, specs: Iterable[PatchEncoderSpec] = ()) -> None:
        self._specs: dict[str, PatchEncoderSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: PatchEncoderSpec) -> None:
        if not isinstance(spec, PatchEncoderSpec):
            raise ConfigError(f"register() expects a PatchEncoderSpec, got {type(spec).__name__}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", spec.name):
            raise ConfigError(f"patch encoder name {spec.name!r} must be lower-case letters, digits, _ . -")
        if spec.name in self._specs:
            raise ConfigError(f"patch encoder {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> PatchEncoderSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown patch encoder {name!r}; `atlaspatch models` lists them (or load yours with --feature-plugin)"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)


def patch_encoder_registry(plugins: Sequence[Path | str] = ()) -> PatchEncoderRegistry:
    """The built-in encoders plus those the given plugin files/modules register."""
    from .plugins import load_plugins

    registry = PatchEncoderRegistry(builtin_specs())
    load_plugins(registry, plugins)
    return registry


def parse_names(text: str | Sequence[str], option: str = "--encoders") -> list[str]:
    """``"a,b c"`` → ``["a", "b", "c"]``: commas or spaces, lower-cased; a repeated name is an error."""
    raw = text if isinstance(text, str) else " ".join(text)
    names = [name.lower() for name in raw.replace(",", " ").split()]
    if not names:
        raise ConfigError(f"{option}: give at least one name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{option}: {name!r} is listed twice")
        seen.add(name)
    return names
