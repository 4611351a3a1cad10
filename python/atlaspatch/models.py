"""Every model the tool can use, in one catalogue: what it is, where its weights come from, and whether they are
on this machine. Built from the registries: segmenters, patch encoders (incl. plugins) and slide encoders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .encoders.slide.spec import SlideEncoderSpec
from .errors import ConfigError
from .weights import WeightsSource, find_local_weights, prefetch


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str
    description: str
    weights: WeightsSource | None
    dim: int | None = None  # output width (encoders)
    input: str = ""  # what the model sees, e.g. "resize 448 bilinear, crop 448"
    extract_at: str = ""  # the authors' patch geometry, e.g. "512 px @ 20x"

    def local_path(self, model_dir: Path | None) -> Path | None:
        return find_local_weights(self.weights, model_dir) if self.weights else None


def _segmenters() -> list[CatalogueEntry]:
    from .segmentation.registry import SEGMENTERS

    return [CatalogueEntry(spec.name, "segmenter", spec.description, spec.weights) for spec in SEGMENTERS.values()]


def _patch_encoders(plugins: Sequence[Path | str]) -> list[CatalogueEntry]:
    from .encoders.patch import patch_encoder_registry

    return [
        CatalogueEntry(
            spec.name,
            spec.kind,
            spec.description,
            spec.weights,
            dim=spec.dim,
            input=spec.preprocess.describe(),
            extract_at=f"{spec.recommended[0]} px @ {spec.recommended[1]}x" if spec.recommended else "",
        )
        for spec in patch_encoder_registry(plugins)
    ]


def _slide_entry(spec: SlideEncoderSpec) -> CatalogueEntry:
    return CatalogueEntry(
        spec.name,
        spec.kind,
        spec.description,
        spec.weights,
        dim=spec.dim,
        input=f"{spec.patch_encoder}: {spec.inputs}",
        extract_at=spec.geometry,
    )


def _slide_encoders() -> list[CatalogueEntry]:
    from .encoders.slide.registry import builtin_slide_specs

    mean = CatalogueEntry(
        "mean-<patch encoder>",
        "slide encoder",
        "mean of any patch encoder's features, e.g. mean-uni_v1 (no weights)",
        None,
        input="<patch encoder>: features",
        extract_at="any",
    )
    return [_slide_entry(spec) for spec in builtin_slide_specs()] + [mean]


def catalogue(plugins: Sequence[Path | str] = ()) -> list[CatalogueEntry]:
    return _segmenters() + _patch_encoders(plugins) + _slide_encoders()


def entry(name: str, plugins: Sequence[Path | str] = ()) -> CatalogueEntry:
    known = {item.name: item for item in catalogue(plugins)}
    key = name.lower()
    if key in known:
        return known[key]
    if key.startswith("mean-"):
        from .encoders.slide import slide_encoder_registry

        return _slide_entry(slide_encoder_registry(plugins).get(key))
    raise ConfigError(f"unknown model {name!r}; `atlaspatch models` lists them: {', '.join(known)}")


def download(
    names: list[str], model_dir: Path | None, plugins: Sequence[Path | str] = ()
) -> list[tuple[str, Path | None]]:
    """Pre-fetch weights for air-gapped nodes; models without weights are reported with None.

    Every name is checked before anything is fetched, so a typo does not leave half the list downloaded.
    """
    entries = [entry(name, plugins) for name in names]
    return [(item.name, prefetch(item.weights, model_dir) if item.weights else None) for item in entries]
