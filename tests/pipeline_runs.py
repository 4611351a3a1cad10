"""Shared by the tests that run the pipeline on real infrastructure (tests/test_images.py: podman;
tests/test_slurm.py: a real Slurm): one Nextflow run with a chosen environment, the published H5s compared with
another run's, and which optional infrastructure a run of the suite requires (ATLASPATCH_REQUIRE)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NEXTFLOW = REPO / "tools" / "nextflow" / "nextflow"
HAVE_NEXTFLOW = bool(list((REPO / ".nextflow-lib").glob("nextflow-*.jar")))
VENV_BIN = Path(sys.executable).parent
# Attrs that name paths or times of one run
RUN_DEPENDENT_ATTRS = {"creation_date", "wsi_path", "seconds", "source_features_sha256"}
FEATURE_TOLERANCE = 1e-4  # the image's torch may be another release than this venv's


def required(kind: str) -> bool:
    """ATLASPATCH_REQUIRE=containers,cuda-image,slurm (CI sets it): these tests fail instead of skipping."""
    return kind in {k.strip() for k in os.environ.get("ATLASPATCH_REQUIRE", "").split(",")}


def unavailable(kind: str, reason: str) -> None:
    if required(kind):
        pytest.fail(f"ATLASPATCH_REQUIRE names {kind}, but {reason}")
    pytest.skip(reason)


def path_without_this_venv() -> str:
    """PATH minus this venv, so that no `atlaspatch` outside a container or job can be what ran."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN)


def nextflow_run(cwd: Path, *args: str | Path, path: str, env: dict[str, str] | None = None, timeout: int = 900):
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        **(env or {}),
        "PATH": path,
        "NXF_HOME": str(cwd / ".nxf-home"),
        "NXF_ANSI_LOG": "false",
    }
    result = subprocess.run(
        [str(NEXTFLOW), "run", str(REPO), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result.output = result.stdout + result.stderr  # type: ignore[attr-defined]
    return result


def trace_rows(outdir: Path) -> list[dict[str, str]]:
    """The newest run's trace: every task, PREFLIGHT included."""
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    assert traces, f"no trace under {outdir / 'pipeline_info'}"
    with traces[-1].open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _attrs(obj: h5py.HLObject) -> dict[str, object]:
    return {k: v for k, v in obj.attrs.items() if k not in RUN_DEPENDENT_ATTRS}


def _same(a: object, b: object) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray | list | tuple) else a == b


def assert_same_h5(ours: Path, reference: Path) -> None:
    """Same datasets and attrs; coords and tissue exact, features and embeddings to FEATURE_TOLERANCE."""
    with h5py.File(ours) as a, h5py.File(reference) as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b), ours.name
        for name in [None, *names_a]:
            obj_a, obj_b = (a, b) if name is None else (a[name], b[name])
            attrs_a, attrs_b = _attrs(obj_a), _attrs(obj_b)
            assert attrs_a.keys() == attrs_b.keys(), (ours.name, name)
            differing = [k for k in attrs_a if not _same(attrs_a[k], attrs_b[k])]
            assert not differing, f"{ours.name}:{name or '/'} attrs differ: {differing}"
            if isinstance(obj_a, h5py.Dataset):
                assert obj_a.shape == obj_b.shape and obj_a.dtype == obj_b.dtype, (ours.name, name)
                if name.startswith(("features/", "slide_features/")):
                    assert np.allclose(obj_a[()], obj_b[()], atol=FEATURE_TOLERANCE), (ours.name, name)
                else:
                    assert np.array_equal(obj_a[()], obj_b[()]), (ours.name, name)


def assert_same_results(ours: Path, reference: Path) -> list[str]:
    """Every published H5 of one outdir against the other's; returns their names."""
    names = sorted(p.name for p in (ours / "patches").glob("*.h5"))
    assert names == sorted(p.name for p in (reference / "patches").glob("*.h5"))
    assert names, f"nothing published in {ours / 'patches'}"
    for name in names:
        assert_same_h5(ours / "patches" / name, reference / "patches" / name)
    return names
