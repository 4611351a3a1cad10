"""Test helpers: put self-made checkpoints where the production weights resolver looks for them.

Only random-init weights of the real architectures, saved in the upstream on-disk format. They let the tests
exercise the real loading path (model dir, Hugging Face cache with HF_HUB_OFFLINE=1); they are never a model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Save a state dict in the format the file name implies: .safetensors, else torch.save (.bin/.pth/.pt)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {key: value.contiguous() for key, value in state.items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)
    return path


def place_in_model_dir(model_dir: Path, name: str, filename: str, source: Path) -> Path:
    """``DIR/<name>/<filename>``, hard-linked (or copied) from an existing file."""
    target = model_dir / name / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def place_in_hf_cache(cache: Path, repo_id: str, filename: str, source: Path, revision: str = REVISION) -> Path:
    """Lay a file out the way huggingface_hub caches it: blobs/<sha256>, snapshots/<rev>/<file>, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / _sha256_file(source)
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        try:
            os.link(source, blob)
        except OSError:
            shutil.copyfile(source, blob)
    snapshot = repo / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if not snapshot.exists():
        os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def real_patches(slide_path: Path, count: int, size: int) -> list[np.ndarray]:
    """`count` size×size RGB patches from the tissue-rich centre band of a real slide, at level 0."""
    from atlaspatch.slides import open_slide

    with open_slide(slide_path) as slide:
        width, height = slide.dimensions
        y = max(0, height // 2 - size // 2)
        step = max(1, (width - size) // max(1, count))
        return [slide.read_region((min(i * step, width - size), y), 0, (size, size)) for i in range(count)]
