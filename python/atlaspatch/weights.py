"""Where model weights come from: the one resolver every model (segmenter, patch and slide encoders) uses.

Resolution order, per the project contract:

1. ``--model-dir DIR`` / ``$ATLASPATCH_MODEL_DIR``: the upstream file at ``DIR/<name>/<filename>``;
2. the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), which works with ``HF_HUB_OFFLINE=1``;
3. a hub download (``HF_TOKEN`` for gated repositories), unless offline.

Every failure is a :class:`WeightsError` whose message is one line: which repository, the licence step when the
repository is gated, and how to pre-fetch the file for an air-gapped node. Nothing here imports torch, and
huggingface_hub is only imported when the cache or the hub is actually consulted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError, one_line

log = logging.getLogger("atlaspatch")

MODEL_DIR_ENV = "ATLASPATCH_MODEL_DIR"
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class WeightsSource:
    name: str  # our model name; also the subfolder under the model dir
    repo_id: str  # Hugging Face repository, e.g. "AtlasAnalyticsLab/AtlasPatch"
    filename: str  # file inside the repository, e.g. "model.pth"
    gated: bool = False
    licence: str = ""  # e.g. "CC-BY-NC-SA-4.0"
    revision: str | None = None
    # A model that is a whole repository (config, remote code, weights): ``filename`` is its weights file, and
    # the repository's other files travel with it (the model dir then holds a copy of the repo at DIR/<name>/).
    snapshot: bool = False

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def source_id(self) -> str:
        """Provenance string for output metadata, e.g. "AtlasAnalyticsLab/AtlasPatch/model.pth"."""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}/{self.filename}{rev}"


def model_dir_from_env(model_dir: Path | None) -> Path | None:
    """The explicit model dir, else ``$ATLASPATCH_MODEL_DIR``, else None."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    value = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` read now (huggingface_hub itself reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now, in huggingface_hub's own order."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var, "").strip()
        if value:
            return Path(value).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def model_dir_path(source: WeightsSource, model_dir: Path) -> Path:
    """Where a model dir keeps this file: ``DIR/<name>/<filename>``."""
    return Path(model_dir) / source.name / source.filename


def _from_hf_cache(source: WeightsSource) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            source.repo_id, source.filename, cache_dir=hub_cache_dir(), revision=source.revision
        )
    except Exception:  # a malformed repo id or cache entry counts as "not cached"
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    return None


def find_local_weights(source: WeightsSource, model_dir: Path | None) -> Path | None:
    """The weights file if it is on this machine (model dir, then HF cache); never touches the network."""
    model_dir = model_dir_from_env(model_dir)
    if model_dir is not None:
        candidate = model_dir_path(source, model_dir)
        if candidate.is_file():
            return candidate
    return _from_hf_cache(source)


def _licence_step(source: WeightsSource, gated: bool) -> str:
    if not gated:
        return ""
    licence = f" ({source.licence})" if source.licence else ""
    return f"accept the licence{licence} at {source.url} and set HF_TOKEN; "


def _prefetch_hint(source: WeightsSource, model_dir: Path | None) -> str:
    target = model_dir_path(source, model_dir) if model_dir is not None else f"DIR/{source.name}/{source.filename}"
    return (
        f"pre-fetch with `atlaspatch models download {source.name} --model-dir DIR` where the network is "
        f"reachable, or place the file at {target} and pass --model-dir DIR (or set {MODEL_DIR_ENV})"
    )


def _error(source: WeightsSource, model_dir: Path | None, reason: str, gated: bool | None = None) -> WeightsError:
    gated = source.gated if gated is None else gated
    return WeightsError(
        f"{source.name} weights ({source.repo_id}/{source.filename}) {reason}; "
        f"{_licence_step(source, gated)}{_prefetch_hint(source, model_dir)}"
    )


def _where_looked(source: WeightsSource, model_dir: Path | None) -> str:
    places = [str(model_dir_path(source, model_dir))] if model_dir is not None else []
    places.append(f"the Hugging Face cache {hub_cache_dir()}")
    return " and ".join(places)


# Other checkpoint formats a repository may carry besides the one we load: not fetched with a snapshot.
_OTHER_WEIGHT_FORMATS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.safetensors")


@contextmanager
def _hub_retries_silenced() -> Iterator[None]:
    """huggingface_hub warns twice per retry (its own handler and ours), a multi-line dump each: the failure that
    remains after its retries becomes our one-line error instead."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _fetch(source: WeightsSource, token: str | None, **target: object) -> str:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    if not source.snapshot:
        return huggingface_hub.hf_hub_download(
            repo_id=source.repo_id, filename=source.filename, revision=source.revision, token=token, **target
        )
    repo = huggingface_hub.snapshot_download(
        repo_id=source.repo_id,
        revision=source.revision,
        token=token,
        ignore_patterns=[p for p in _OTHER_WEIGHT_FORMATS if not source.filename.endswith(p[1:])],
        **target,
    )
    path = Path(repo) / source.filename
    if not path.is_file():
        raise hf_errors.EntryNotFoundError(f"{source.filename} not in {source.repo_id}")
    return str(path)


def _download(source: WeightsSource, model_dir: Path | None, **target: object) -> Path:
    """hf_hub_download with every hub/network failure turned into a one-line WeightsError."""
    from huggingface_hub import errors as hf_errors

    token = os.environ.get("HF_TOKEN") or None
    log.info("%s weights: fetching %s from the Hugging Face hub", source.name, source.source_id)
    try:
        with _hub_retries_silenced():
            path = _fetch(source, token, **target)
    except hf_errors.GatedRepoError:
        raise _error(source, model_dir, "are gated and this account has no access", gated=True) from None
    except hf_errors.RepositoryNotFoundError:
        reason = "could not be fetched: repository not found or not accessible (set HF_TOKEN if it is private)"
        raise _error(source, model_dir, reason) from None
    except hf_errors.RevisionNotFoundError:
        raise _error(source, model_dir, f"could not be fetched: revision {source.revision!r} not found") from None
    except hf_errors.LocalEntryNotFoundError:
        reason = "could not be fetched: the hub is unreachable and no cached copy exists"
        raise _error(source, model_dir, reason) from None
    except hf_errors.EntryNotFoundError:
        raise _error(source, model_dir, f"could not be fetched: no file {source.filename} in the repository") from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            reason = f"could not be fetched: access denied (HTTP {status})"
            raise _error(source, model_dir, reason, gated=True) from None
        raise _error(source, model_dir, f"could not be fetched ({one_line(exc)})") from None
    except Exception as exc:  # connection errors, timeouts, disk full, …: one line, never a traceback
        raise _error(source, model_dir, f"could not be fetched ({one_line(exc)})") from None
    return Path(path)


def resolve_weights(source: WeightsSource, model_dir: Path | None = None) -> Path:
    """Path of the weights file: model dir → HF cache → hub download (unless ``HF_HUB_OFFLINE=1``)."""
    model_dir = model_dir_from_env(model_dir)
    local = find_local_weights(source, model_dir)
    if local is not None:
        return local
    if hub_offline():
        reason = f"are not on this machine (looked in {_where_looked(source, model_dir)}) and HF_HUB_OFFLINE=1"
        raise _error(source, model_dir, reason)
    return _download(source, model_dir, cache_dir=hub_cache_dir())


def prefetch(source: WeightsSource, model_dir: Path | None) -> Path:
    """Put the weights where a later offline run finds them, for ``atlaspatch models download``.

    With a model dir (explicit or ``$ATLASPATCH_MODEL_DIR``) the file lands at ``DIR/<name>/<filename>``, copied
    from the HF cache when it is already there; without one it goes into the HF cache.
    """
    model_dir = model_dir_from_env(model_dir)
    if model_dir is None:
        return resolve_weights(source, None)
    target = model_dir_path(source, model_dir)
    if target.is_file():
        return target
    cached = _from_hf_cache(source)
    if cached is None:
        if hub_offline():
            reason = f"are not in the Hugging Face cache {hub_cache_dir()} and HF_HUB_OFFLINE=1"
            raise _error(source, model_dir, reason)
        cached = _download(source, model_dir, cache_dir=hub_cache_dir())
    try:
        if source.snapshot:
            _copy_repo(cached.parent, target.parent)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(cached, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise WeightsError(f"cannot write {source.name} weights to {target} ({one_line(exc)})") from None
    return target


def _copy_repo(snapshot: Path, target_dir: Path) -> None:
    """Copy a cached repository snapshot to DIR/<name>/ through a temp dir, so a killed copy leaves no repo."""
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", suffix=".tmp", dir=target_dir.parent))
    try:
        shutil.copytree(snapshot, tmp, dirs_exist_ok=True)  # follows the cache's symlinks into blobs
        if target_dir.exists():
            shutil.rmtree(target_dir)
        os.replace(tmp, target_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, computed once per (path, size, mtime) in this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = value
    return value
