"""Embed-slide stage: a tiled H5 with patch features → ``slide_features/<encoder>`` (D,) float32.

Each embedding records what it was computed from: AtlasPatch's attrs (encoder_name, source_patch_encoder,
num_patches, patch_size, patch_size_level0, target_magnification) plus a SHA-256 fingerprint of the exact features
dataset (its values and its attrs). An existing embedding is reused only when all of these still match the H5;
one whose features were recomputed (or that has no fingerprint, e.g. from AtlasPatch) is recomputed. All
embeddings of a run go into a temporary copy of the H5 that replaces the target in one rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..encoders.slide.plan import MAG_OPT_OUT
from ..encoders.slide.spec import SlideEncoderSpec, SlideInputs
from ..errors import ConfigError, H5Error
from ..h5 import schema
from ..h5.atomic import atomic_h5
from ..h5.attrs import read_attrs, write_attrs
from ..h5.inspect import H5State, complete_features
from .embed_patches import read_state

log = logging.getLogger("atlaspatch")

FINGERPRINT_ROWS = 8192  # rows hashed per read: bounded memory on slides with 100k+ patches


@dataclass
class SlideEmbeddingResult:
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def features_fingerprint(dataset: h5py.Dataset) -> str:
    """SHA-256 identifying one features dataset: its attrs (which say when and how it was computed; AtlasPatch writes
    none), its shape, then its values as little-endian float32, row block by block.

    Recomputed features therefore get a new fingerprint even when their values come out the same, and every
    embedding made from the old ones is refreshed.
    """
    attrs = {key: str(value) for key, value in read_attrs(dataset).items()}
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode())
    digest.update(f"{tuple(dataset.shape)}".encode())
    for start in range(0, dataset.shape[0], FINGERPRINT_ROWS):
        block = np.ascontiguousarray(dataset[start : start + FINGERPRINT_ROWS], dtype="<f4")
        digest.update(block.tobytes())
    return digest.hexdigest()


def summary_attrs(state: H5State) -> dict[str, int]:
    """The H5's values of the fields an embedding is checked against."""
    values: dict[str, int] = {"num_patches": int(state.num_patches or 0)}
    for name in ("patch_size", "patch_size_level0", "target_magnification"):
        if name not in state.attrs:
            raise H5Error(f"{state.path.name} has no {name} attribute: it was not tiled by AtlasPatch(-NF)")
        values[name] = int(state.attrs[name])
    return values


def check_geometry(state: H5State, specs: Sequence[SlideEncoderSpec], allow_mag_mismatch: bool) -> None:
    """The H5's patches must be the ones each encoder was trained on (magnification: unless opted out)."""
    summary = summary_attrs(state)
    for spec in specs:
        if spec.patch_size is not None and summary["patch_size"] != spec.patch_size:
            raise ConfigError(
                f"{spec.name} needs {spec.geometry} patches but {state.path.name} has {summary['patch_size']} px "
                "patches: tile the slide again with the encoder's patch size into another --output"
            )
        mag = spec.magnification
        if mag and summary["target_magnification"] != mag and not allow_mag_mismatch:
            raise ConfigError(
                f"{spec.name} was trained at {mag}x but {state.path.name} was tiled at "
                f"{summary['target_magnification']}x: re-tile at {mag}x, or pass {MAG_OPT_OUT} to embed anyway"
            )


def require_features(state: H5State, specs: Sequence[SlideEncoderSpec], feature_dims: Mapping[str, int]) -> None:
    needed = {spec.patch_encoder for spec in specs}
    missing = sorted(name for name in needed if not complete_features(state, name, feature_dims[name]))
    if missing:
        raise H5Error(
            f"{state.path.name} lacks complete features/{', features/'.join(missing)}: "
            "run `atlaspatch embed-patches` on the slide first"
        )


def _stale_reason(
    dataset: h5py.Dataset, spec: SlideEncoderSpec, summary: Mapping[str, int], fingerprint: Callable[[], str]
) -> str | None:
    """Why an existing embedding cannot be reused (None: it can)."""
    attrs = read_attrs(dataset)
    if dataset.shape != (spec.dim,):
        return f"shape {dataset.shape} != ({spec.dim},)"
    expected = {
        schema.SLIDE_ENCODER_NAME: spec.name,
        schema.SLIDE_SOURCE_PATCH_ENCODER: spec.patch_encoder,
        **{name: summary[name] for name in schema.SLIDE_REUSE_FIELDS},
    }
    for name, want in expected.items():
        if str(attrs.get(name)) != str(want):
            return f"{name} {attrs.get(name)} != {want}"
    if schema.SLIDE_SOURCE_FEATURES not in attrs:
        return "no fingerprint of the features it came from"
    if attrs[schema.SLIDE_SOURCE_FEATURES] != fingerprint():
        return f"features/{spec.patch_encoder} changed since it was computed"
    return None


class _Fingerprints:
    """Features fingerprints of one open H5, each computed at most once."""

    def __init__(self, handle: h5py.File) -> None:
        self.handle = handle
        self._known: dict[str, str] = {}

    def __call__(self, patch_encoder: str) -> str:
        """The fingerprint, or "" when the features are gone (so no embedding matches them)."""
        if patch_encoder not in self._known:
            dataset = self.handle.get(f"{schema.FEATURES}/{patch_encoder}")
            found = isinstance(dataset, h5py.Dataset)
            self._known[patch_encoder] = features_fingerprint(dataset) if found else ""
        return self._known[patch_encoder]


def missing_embeddings(h5_path: Path, specs: Sequence[SlideEncoderSpec], force: bool) -> list[SlideEncoderSpec]:
    """The encoders whose embedding is absent or stale in the H5 (all of them with force)."""
    if force:
        return list(specs)
    state = read_state(h5_path)
    summary = summary_attrs(state)
    todo: list[SlideEncoderSpec] = []
    with h5py.File(h5_path, "r") as handle:
        fingerprints = _Fingerprints(handle)
        group = handle.get(schema.SLIDE_FEATURES)
        for spec in specs:
            dataset = group.get(spec.name) if group is not None else None
            if not isinstance(dataset, h5py.Dataset):
                todo.append(spec)
                continue
            reason = _stale_reason(dataset, spec, summary, lambda s=spec: fingerprints(s.patch_encoder))
            if reason:
                log.info("%s: slide_features/%s is stale (%s); recomputing", h5_path.name, spec.name, reason)
                todo.append(spec)
    return todo


def read_slide_inputs(h5_path: Path, patch_encoder: str) -> SlideInputs:
    state = read_state(h5_path)
    summary = summary_attrs(state)
    with h5py.File(h5_path, "r") as handle:
        features = np.asarray(handle[schema.FEATURES][patch_encoder][()], dtype=np.float32)
        coords = np.asarray(handle[schema.COORDS][:, :2], dtype=np.int64)
    return SlideInputs(
        h5_path=Path(h5_path),
        features=features,
        coords=coords,
        patch_size=summary["patch_size"],
        patch_size_level0=summary["patch_size_level0"],
        target_magnification=summary["target_magnification"],
    )


def embedding_attrs(encoder: Any, inputs: SlideInputs, fingerprint: str, seconds: float) -> dict[str, Any]:
    spec: SlideEncoderSpec = encoder.spec
    return {
        schema.SLIDE_ENCODER_NAME: spec.name,
        schema.SLIDE_SOURCE_PATCH_ENCODER: spec.patch_encoder,
        "num_patches": inputs.num_patches,
        "patch_size": inputs.patch_size,
        "patch_size_level0": inputs.patch_size_level0,
        "target_magnification": inputs.target_magnification,
        schema.SLIDE_SOURCE_FEATURES: fingerprint,
        "dim": spec.dim,
        "precision": encoder.precision,
        "device": encoder.device,
        "weights_source": encoder.weights_source,
        "weights_sha256": encoder.weights_sha256,
        "seconds": round(seconds, 3),
        "creation_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        schema.TOOL_VERSION: __version__,
    }


def compute_embedding(h5_path: Path, encoder: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one slide encoder on the H5's features: the (dim,) vector and the attrs to store with it."""
    spec: SlideEncoderSpec = encoder.spec
    inputs = read_slide_inputs(h5_path, spec.patch_encoder)
    if inputs.num_patches == 0:
        raise H5Error(f"{h5_path.name} has 0 patches (no tissue found): there is nothing to embed")
    started = time.perf_counter()
    vector = encoder.encode(inputs)
    with h5py.File(h5_path, "r") as handle:
        fingerprint = features_fingerprint(handle[schema.FEATURES][spec.patch_encoder])
    return vector, embedding_attrs(encoder, inputs, fingerprint, time.perf_counter() - started)


def write_embeddings(handle: h5py.File, embeddings: Mapping[str, tuple[np.ndarray, dict[str, Any]]]) -> None:
    group = handle.require_group(schema.SLIDE_FEATURES)
    for name, (vector, attrs) in embeddings.items():
        if name in group:
            del group[name]
        dataset = group.create_dataset(name, data=np.asarray(vector, dtype=np.float32))
        write_attrs(dataset, attrs)


def embed_slide(
    h5_in: Path,
    h5_out: Path,
    specs: Sequence[SlideEncoderSpec],
    get_encoder: Callable[[SlideEncoderSpec], Any],
    force: bool = False,
) -> SlideEmbeddingResult:
    """Add the missing or stale embeddings of ``specs`` to the H5, in one atomic replace of ``h5_out``.

    ``get_encoder(spec)`` gives the loaded encoder (so a caller can load each model once for many slides).
    ``h5_in`` is never modified unless it is ``h5_out`` itself, and then only by an atomic replace.
    """
    todo = missing_embeddings(h5_in, specs, force)
    result = SlideEmbeddingResult(
        computed=[spec.name for spec in todo], reused=[spec.name for spec in specs if spec not in todo]
    )
    embeddings = {spec.name: compute_embedding(h5_in, get_encoder(spec)) for spec in todo}
    if embeddings or Path(h5_out).resolve() != Path(h5_in).resolve():
        with atomic_h5(h5_out, start_from=h5_in) as handle:
            write_embeddings(handle, embeddings)
    return result


def feature_dims(specs: Sequence[SlideEncoderSpec], patch_registry: Any) -> dict[str, int]:
    """Width of each patch feature the encoders consume (an unknown patch encoder is a one-line error)."""
    return {spec.patch_encoder: patch_registry.get(spec.patch_encoder).dim for spec in specs}


def embed_slide_locked(
    h5_in: Path,
    h5_out: Path,
    lock_path: Path,
    specs: Sequence[SlideEncoderSpec],
    dims: Mapping[str, int],
    get_encoder: Callable[[SlideEncoderSpec], Any],
    force: bool = False,
    allow_mag_mismatch: bool = False,
) -> SlideEmbeddingResult:
    """embed_slide under the slide's lock, after checking geometry and features (stage command and pipeline)."""
    from ..h5.atomic import remove_leftover_temps
    from ..h5.locks import SlideLock

    with SlideLock(lock_path, slide=Path(h5_out).stem, phase="embed-slide"):
        remove_leftover_temps(h5_out)
        state = read_state(h5_in)
        check_geometry(state, specs, allow_mag_mismatch)
        require_features(state, specs, dims)
        return embed_slide(h5_in, h5_out, specs, get_encoder, force)
