"""The slide encoder table: one row per model, plus ``mean-<patch_encoder>`` for every patch encoder.

Importing this module does not import torch; each model's code is imported when it is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import ConfigError
from ..patch import PatchEncoderRegistry, patch_encoder_registry
from . import moozy, prism, titan
from .mean import PREFIX, mean_spec
from .spec import SlideEncoderSpec


def builtin_slide_specs() -> list[SlideEncoderSpec]:
    return [titan.SPEC, prism.SPEC, moozy.SPEC]


class SlideEncoderRegistry:
    def __init__(self, specs: Sequence[SlideEncoderSpec], patch_encoders: PatchEncoderRegistry) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.patch_encoders = patch_encoders

    def __iter__(self) -> Iterator[SlideEncoderSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return [*self._specs, f"{PREFIX}<patch encoder>"]

    def get(self, name: str) -> SlideEncoderSpec:
        key = name.strip().lower()
        if key in self._specs:
            return self._specs[key]
        if key.startswith(PREFIX):
            patch_name = key[len(PREFIX) :]
            if patch_name in self.patch_encoders.names():
                return mean_spec(patch_name, self.patch_encoders.get(patch_name).dim)
            raise ConfigError(
                f"unknown slide encoder {name!r}: {patch_name!r} is not a patch encoder "
                "(`atlaspatch models` lists them; add your own with --feature-plugin)"
            )
        raise ConfigError(
            f"unknown slide encoder {name!r}; choose from {', '.join(self.names())} (`atlaspatch models` lists them)"
        )


def slide_encoder_registry(plugins: Sequence[Path | str] = ()) -> SlideEncoderRegistry:
    return SlideEncoderRegistry(builtin_slide_specs(), patch_encoder_registry(plugins))
