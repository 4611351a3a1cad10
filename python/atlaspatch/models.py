"""Every model the tool can use, in one catalogue: what it is, where its weights come from, and whether they are
on this machine. Built from the registries (segmenters now; patch and slide encoders join the same table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .weights import WeightsSource, find_local_weights, prefetch


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str
    description: str
    weights: WeightsSource | None

    def local_path(self, model_dir: Path | None) -> Path | None:
        return find_local_weights(self.weights, model_dir) if self.weights else None


def catalogue() -> list[CatalogueEntry]:
    from .segmentation.registry import SEGMENTERS

    return [CatalogueEntry(spec.name, "segmenter", spec.description, spec.weights) for spec in SEGMENTERS.values()]


def entry(name: str) -> CatalogueEntry:
    known = {item.name: item for item in catalogue()}
    try:
        return known[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; `atlaspatch models` lists them: {', '.join(known)}") from None


def download(names: list[str], model_dir: Path | None) -> list[tuple[str, Path | None]]:
    """Pre-fetch weights for air-gapped nodes; models without weights are reported with None."""
    return [(name, prefetch(item.weights, model_dir) if (item := entry(name)).weights else None) for name in names]
