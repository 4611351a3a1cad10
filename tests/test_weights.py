"""Weights resolution: model dir → HF cache → hub, and the one-line errors. No network: the hub is faked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors

from atlaspatch.errors import WeightsError
from atlaspatch.weights import (
    WeightsSource,
    find_local_weights,
    model_dir_from_env,
    prefetch,
    resolve_weights,
    sha256_of,
)

SOURCE = WeightsSource(name="toy", repo_id="Org/Toy-Repo", filename="model.pth", licence="CC-BY-NC-SA-4.0")
GATED = WeightsSource(name="gated", repo_id="Org/Gated", filename="weights.bin", gated=True, licence="custom")
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache under tmp, offline, no model dir from the environment."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("ATLASPATCH_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def put_in_hf_cache(cache: Path, repo_id: str, filename: str, data: bytes, revision: str = REVISION) -> Path:
    """Write a file the way huggingface_hub lays out its cache: blobs, snapshots/<rev>/<file>, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def put_in_model_dir(model_dir: Path, source: WeightsSource, data: bytes) -> Path:
    path = model_dir / source.name / source.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_model_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_dir_from_env(None) is None
    monkeypatch.setenv("ATLASPATCH_MODEL_DIR", str(tmp_path / "env"))
    assert model_dir_from_env(None) == tmp_path / "env"
    assert model_dir_from_env(tmp_path / "arg") == tmp_path / "arg"


def test_resolved_from_model_dir(tmp_path: Path, isolated_hub: Path) -> None:
    expected = put_in_model_dir(tmp_path / "models", SOURCE, b"from model dir")
    put_in_hf_cache(isolated_hub, SOURCE.repo_id, SOURCE.filename, b"from cache")
    assert resolve_weights(SOURCE, tmp_path / "models") == expected  # the model dir wins over the cache
    assert find_local_weights(SOURCE, tmp_path / "models") == expected


def test_model_dir_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = put_in_model_dir(tmp_path / "models", SOURCE, b"x")
    monkeypatch.setenv("ATLASPATCH_MODEL_DIR", str(tmp_path / "models"))
    assert resolve_weights(SOURCE) == expected


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE"])
def test_resolved_from_hf_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    if variable == "HF_HUB_CACHE":
        cache = tmp_path / "explicit_cache"
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    else:
        cache = tmp_path / "hf_home" / "hub"
    put_in_hf_cache(cache, SOURCE.repo_id, SOURCE.filename, b"cached weights")
    found = resolve_weights(SOURCE, tmp_path / "empty_model_dir")
    assert found.read_bytes() == b"cached weights"
    assert str(found).startswith(str(cache))


def test_pinned_revision_is_looked_up_in_its_snapshot(isolated_hub: Path) -> None:
    put_in_hf_cache(isolated_hub, SOURCE.repo_id, SOURCE.filename, b"pinned")
    pinned = WeightsSource(SOURCE.name, SOURCE.repo_id, SOURCE.filename, revision=REVISION)
    assert resolve_weights(pinned).read_bytes() == b"pinned"
    other = WeightsSource(SOURCE.name, SOURCE.repo_id, SOURCE.filename, revision="f" * 40)
    assert find_local_weights(other, None) is None


def test_missing_offline_names_repo_and_prefetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline resolution must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(WeightsError) as caught:
        resolve_weights(SOURCE, tmp_path / "models")
    message = str(caught.value)
    assert "\n" not in message
    assert "Org/Toy-Repo" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "atlaspatch models download toy --model-dir DIR" in message
    assert str(tmp_path / "models" / "toy" / "model.pth") in message
    assert "licence" not in message  # not gated


def test_gated_mentions_licence_step() -> None:
    with pytest.raises(WeightsError) as caught:
        resolve_weights(GATED)
    message = str(caught.value)
    assert "accept the licence (custom) at https://huggingface.co/Org/Gated and set HF_TOKEN" in message
    assert "atlaspatch models download gated --model-dir DIR" in message
    assert "DIR/gated/weights.bin" in message


ENTRY_NOT_FOUND = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)  # hub 1.x / 0.x


def _http_error(cls: type[Exception], status: int) -> Exception:
    response = SimpleNamespace(headers={}, request=None, status_code=status)
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_http_error(hf_errors.GatedRepoError, 403), "accept the licence"),
        (_http_error(hf_errors.RepositoryNotFoundError, 401), "not found or not accessible"),
        (_http_error(ENTRY_NOT_FOUND, 404), "no file model.pth"),
        (_http_error(hf_errors.HfHubHTTPError, 403), "access denied (HTTP 403)"),
        (hf_errors.LocalEntryNotFoundError("connection refused"), "hub is unreachable"),
        (ConnectionError("Name or service not known"), "Name or service not known"),
    ],
)
def test_hub_failures_become_one_line(monkeypatch: pytest.MonkeyPatch, error: Exception, expected: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def failing(*args: object, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(WeightsError) as caught:
        resolve_weights(SOURCE)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message and "Org/Toy-Repo" in message
    assert "atlaspatch models download toy" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_online_download_goes_to_the_hf_cache(monkeypatch: pytest.MonkeyPatch, isolated_hub: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    calls: list[dict] = []

    def fake_download(**kwargs: object) -> str:
        calls.append(kwargs)
        return str(put_in_hf_cache(isolated_hub, SOURCE.repo_id, SOURCE.filename, b"downloaded"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_weights(SOURCE).read_bytes() == b"downloaded"
    assert calls[0]["repo_id"] == "Org/Toy-Repo" and calls[0]["filename"] == "model.pth"
    assert calls[0]["token"] == "hf_secret"
    assert Path(str(calls[0]["cache_dir"])) == isolated_hub
    assert resolve_weights(SOURCE).read_bytes() == b"downloaded"
    assert len(calls) == 1  # second time it came from the cache


def test_prefetch_copies_from_cache_into_model_dir(tmp_path: Path, isolated_hub: Path) -> None:
    put_in_hf_cache(isolated_hub, SOURCE.repo_id, SOURCE.filename, b"weights")
    target = prefetch(SOURCE, tmp_path / "models")
    assert target == tmp_path / "models" / "toy" / "model.pth"
    assert target.read_bytes() == b"weights" and not target.is_symlink()
    assert [p.name for p in target.parent.iterdir()] == ["model.pth"]  # no temp files left
    assert prefetch(SOURCE, tmp_path / "models") == target  # idempotent


def test_prefetch_downloads_when_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_hub: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def fake_download(**kwargs: object) -> str:
        return str(put_in_hf_cache(isolated_hub, SOURCE.repo_id, SOURCE.filename, b"fresh"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert prefetch(SOURCE, tmp_path / "models").read_bytes() == b"fresh"
    assert prefetch(SOURCE, None).read_bytes() == b"fresh"  # no model dir: the HF cache is the destination


def test_prefetch_offline_without_cache_fails(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE=1"):
        prefetch(SOURCE, tmp_path / "models")
    assert not (tmp_path / "models" / "toy" / "model.pth").exists()


def test_sha256_of(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()  # cached
    path.write_bytes(b"changed, so size and mtime differ")
    assert sha256_of(path) == hashlib.sha256(b"changed, so size and mtime differ").hexdigest()


def test_weights_module_does_not_import_torch() -> None:
    code = (
        "import sys, atlaspatch.weights, atlaspatch.segmentation, atlaspatch.segmentation.otsu;"
        "assert 'torch' not in sys.modules and 'sam2' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_command_lists_and_prefetches_through_the_cli(tmp_path: Path, isolated_hub: Path) -> None:
    """`atlaspatch models` / `models download` as a user runs them, against a hub cache on disk, offline."""
    from atlaspatch.segmentation.registry import SAM2_WEIGHTS
    from conftest import run_atlaspatch

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(isolated_hub), "HF_HOME": str(tmp_path / "hf-home")}
    listing = run_atlaspatch("models", env=env)
    assert listing.returncode == 0
    sam2_row = next(line for line in listing.stdout.splitlines() if "AtlasAnalyticsLab/AtlasPatch/model.pth" in line)
    assert "│ no " in sam2_row and "CC-BY-NC-SA-4.0" in sam2_row

    put_in_hf_cache(isolated_hub, SAM2_WEIGHTS.repo_id, SAM2_WEIGHTS.filename, b"checkpoint bytes")
    model_dir = tmp_path / "models"
    fetched = run_atlaspatch("models", "download", "sam2", "otsu", "--model-dir", model_dir, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (model_dir / "sam2" / "model.pth").read_bytes() == b"checkpoint bytes"
    assert "otsu: no weights needed" in fetched.stdout
    listed = run_atlaspatch("models", "--model-dir", model_dir, env=env)
    assert f"sam2: {model_dir / 'sam2' / 'model.pth'}" in listed.stdout.splitlines()

    unknown = run_atlaspatch("models", "download", "uni_v9", env=env)
    assert unknown.returncode == 2 and "unknown model 'uni_v9'" in unknown.stderr


REPO_SOURCE = WeightsSource(
    name="toyrepo", repo_id="Org/Toy-Slide", filename="model.safetensors", gated=True, licence="custom", snapshot=True
)


def test_a_whole_repository_is_fetched_as_a_snapshot_and_copied_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_hub: Path
) -> None:
    """Remote-code models (TITAN, PRISM): the hub gives the whole repository (code, config, the one weights file),
    and `models download --model-dir` copies all of it to DIR/<name>/."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict[str, object]] = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        for name, data in {"config.json": b"{}", "modeling_toy.py": b"# code\n", "model.safetensors": b"w"}.items():
            put_in_hf_cache(isolated_hub, repo_id, name, data)
        return str(isolated_hub / "models--Org--Toy-Slide" / "snapshots" / REVISION)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = resolve_weights(REPO_SOURCE)
    assert path.name == "model.safetensors" and (path.parent / "modeling_toy.py").is_file()
    (call,) = calls
    assert call["repo_id"] == "Org/Toy-Slide" and call["cache_dir"] == isolated_hub
    assert "*.bin" in call["ignore_patterns"] and "*.safetensors" not in call["ignore_patterns"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copied = prefetch(REPO_SOURCE, tmp_path / "models")
    assert copied == tmp_path / "models" / "toyrepo" / "model.safetensors"
    assert sorted(p.name for p in copied.parent.iterdir()) == ["config.json", "model.safetensors", "modeling_toy.py"]
    assert not any(p.is_symlink() for p in copied.parent.iterdir())  # real files, not links into the cache
    assert find_local_weights(REPO_SOURCE, tmp_path / "models") == copied


def test_a_gated_repository_snapshot_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def gated(*args: object, **kwargs: object) -> str:
        raise _http_error(hf_errors.GatedRepoError, 403)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(WeightsError) as caught:
        resolve_weights(REPO_SOURCE)
    message = str(caught.value)
    assert "toyrepo weights (Org/Toy-Slide/model.safetensors) are gated" in message and "\n" not in message
    assert "accept the licence (custom) at https://huggingface.co/Org/Toy-Slide and set HF_TOKEN" in message


def test_an_unreachable_hub_is_one_line_after_quiet_retries(tmp_path: Path, cmu_svs: Path) -> None:
    """The real hub client against a closed port: its retries (sleeps made instant) print nothing, then one line."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ATLASPATCH_MODEL_DIR", "HF_HUB_CACHE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home")}
    code = (
        "import sys, time; time.sleep = lambda s: sys.stderr.write(f'RETRY-SLEEP {s}\\n'); "
        "from atlaspatch.cli import main; main()"
    )
    args = [sys.executable, "-c", code, "segment", str(cmu_svs), "-o", str(tmp_path / "out"), "--device", "cpu"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)

    assert run.returncode != 0
    lines = run.stderr.splitlines()
    assert sum(line.startswith("RETRY-SLEEP") for line in lines) >= 2, run.stderr  # the client did retry
    assert "Retrying" not in run.stderr and "thrown while requesting" not in run.stderr, run.stderr
    assert "fetching AtlasAnalyticsLab/AtlasPatch/model.pth from the Hugging Face hub" in run.stderr
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "the hub is unreachable" in errors[0] and "Traceback" not in run.stderr
    assert not list((tmp_path / "out").rglob("*.h5"))
