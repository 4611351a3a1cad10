"""Segment stage: slide → thumbnail → tissue mask → tissue regions and holes, stored in the H5's tissue/ group."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..h5 import schema
from ..h5.atomic import atomic_h5
from ..h5.attrs import read_attrs, write_attrs
from ..h5.provenance import slide_attrs
from ..segmentation.contours import TissueContours, mask_to_contours
from ..segmentation.registry import Segmenter
from ..segmentation.thumbnail import THUMBNAIL_MAGNIFICATION, read_thumbnail
from ..slides.reader import Slide


@dataclass
class TissueSegmentation:
    mask: np.ndarray  # uint8 (h, w) thumbnail mask
    downsample: tuple[float, float]  # level-0 pixels per mask pixel
    contours: TissueContours
    segmenter: str
    weights_id: str
    thumbnail: np.ndarray | None = None  # RGB, kept in memory only (for overlays)

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def segment_slides(slides: list[Slide], segmenter: Segmenter) -> list[TissueSegmentation]:
    """Segment a batch of slides at once (one model call for the batch)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(slides)))) as pool:
        thumbnails = list(pool.map(read_thumbnail, slides))
    masks = segmenter.predict(thumbnails, [slide.mpp for slide in slides])
    return [
        TissueSegmentation(
            mask=mask.astype(np.uint8),
            downsample=thumb.downsample,
            contours=mask_to_contours(mask, thumb.downsample),
            segmenter=segmenter.name,
            weights_id=segmenter.weights_id,
            thumbnail=thumb.image,
        )
        for thumb, mask in zip(thumbnails, masks, strict=True)
    ]


def write_tissue(handle: h5py.File, tissue: TissueSegmentation) -> None:
    if schema.TISSUE in handle:
        del handle[schema.TISSUE]
    group = handle.create_group(schema.TISSUE)
    points, offsets, parents = tissue.contours.pack()
    handle.create_dataset(schema.TISSUE_MASK, data=tissue.mask, compression="gzip", compression_opts=4)
    handle.create_dataset(schema.TISSUE_POINTS, data=points)
    handle.create_dataset(schema.TISSUE_OFFSETS, data=offsets)
    handle.create_dataset(schema.TISSUE_PARENTS, data=parents)
    write_attrs(
        group,
        {
            schema.TISSUE_SEGMENTER: tissue.segmenter,
            schema.TISSUE_WEIGHTS: tissue.weights_id,
            schema.TISSUE_DOWNSAMPLE: np.asarray(tissue.downsample, dtype=np.float64),
            schema.TISSUE_MAGNIFICATION: THUMBNAIL_MAGNIFICATION,
            "num_regions": len(tissue.contours.regions),
            "num_holes": len(tissue.contours.polygons) - len(tissue.contours.regions),
        },
    )


def read_tissue(handle: h5py.File) -> TissueSegmentation:
    group = handle[schema.TISSUE]
    attrs = read_attrs(group)
    downsample = attrs[schema.TISSUE_DOWNSAMPLE]
    contours = TissueContours.unpack(
        handle[schema.TISSUE_POINTS][()], handle[schema.TISSUE_OFFSETS][()], handle[schema.TISSUE_PARENTS][()]
    )
    return TissueSegmentation(
        mask=handle[schema.TISSUE_MASK][()],
        downsample=(float(downsample[0]), float(downsample[1])),
        contours=contours,
        segmenter=str(attrs[schema.TISSUE_SEGMENTER]),
        weights_id=str(attrs.get(schema.TISSUE_WEIGHTS, "")),
    )


def write_segmentation_h5(path: Path, slide: Slide, tissue: TissueSegmentation) -> None:
    """The segment stage's own output: slide attrs + tissue group (no coords yet)."""
    with atomic_h5(path) as handle:
        write_attrs(handle, slide_attrs(slide))
        write_tissue(handle, tissue)
