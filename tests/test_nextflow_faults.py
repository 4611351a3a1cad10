"""Faults in a real Nextflow run (SEGMENT -> TILE -> EMBED_PATCHES -> ENCODE_SLIDE on the CMU slide, local executor):
a task's process killed with SIGKILL, and the Nextflow head (the JVM) killed with SIGKILL. Either way the run ends
with the same published H5 as a clean run. The patch encoder is tests/plugins/slow_resnet18.py (the example
ResNet-18 with random weights, sleeping ATLASPATCH_TEST_BATCH_SLEEP seconds per batch), so the kill lands while
EMBED_PATCHES is writing features: once its temp H5 (h5/atomic.py) exists."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_nextflow import (  # noqa: F401  (embed_model_dir is a fixture)
    NEXTFLOW,
    REPO,
    attrs,
    embed_model_dir,
    nextflow,
    offline_env,
    same_value,
    trace_rows,
)

pytestmark = pytest.mark.nextflow

PLUGIN = REPO / "tests" / "plugins" / "slow_resnet18.py"
ENCODER = "slow_resnet18"
SLIDE_ENCODER = f"mean-{ENCODER}"
EMBED = "ATLASPATCH:EMBED_PATCHES"
RUN_DEPENDENT_ATTRS = {"creation_date", "seconds"}
BATCH_SLEEP = "0.3"  # seconds per batch of 16 patches: EMBED_PATCHES writes features for a few seconds


@pytest.fixture(scope="module")
def fault_models(embed_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The example ResNet-18 weights under the slow plugin's name."""
    root = tmp_path_factory.mktemp("nf-fault-models")
    (root / ENCODER).mkdir()
    (root / ENCODER / "resnet18.pth").symlink_to(embed_model_dir / "my_resnet18" / "resnet18.pth")
    return root


def run_args(tmp: Path, slide: Path, models: Path) -> tuple[str | Path, ...]:
    return (
        "-profile", "test", "--input", slide, "--outdir", tmp / "results", "-work-dir", tmp / "work",
        "--slide_encoders", SLIDE_ENCODER, "--feature_plugin", PLUGIN, "--model_dir", models,
        "--feature_precision", "float32", "--feature_batch_size", "16", "--feature_num_workers", "0",
    )  # fmt: skip


def env_for(tmp: Path, batch_sleep: str) -> dict[str, str]:
    """offline_env, the slow encoder's sleep, and the JVM with the C1 JIT only (as the official launcher runs every
    command but `run`): on 2 cores C2 compilation threads compete with the tasks, and a short run spends a third of
    the time."""
    return {**offline_env(tmp), "ATLASPATCH_TEST_BATCH_SLEEP": batch_sleep, "NXF_OPTS": "-XX:TieredStopAtLevel=1"}


def start_nextflow(tmp: Path, *args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`nextflow run` in the background, as the `nextflow` helper runs it, in a session of its own (its process
    group holds the JVM and every task it starts). The launcher execs java: the pid is the JVM's."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
           "NXF_HOME": str(tmp / ".nxf-home"), "NXF_ANSI_LOG": "false"}  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    log = (tmp / "nextflow.out").open("w")
    return subprocess.Popen(
        [str(NEXTFLOW), "run", str(REPO), *map(str, args)],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(what: str, find, run: subprocess.Popen[str], timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        assert run.poll() is None, f"the run ended (rc {run.returncode}) before {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def embedding_task_dir(work: Path, stem: str, besides: Path | None = None) -> Path | None:
    """The EMBED_PATCHES task dir (other than `besides`) once the tool is writing into its temp H5
    (patches/.<stem>.h5.tmp.<uuid>)."""
    for script in work.glob("*/*/.command.sh"):
        if script.parent == besides:
            continue
        if "atlaspatch embed-patches" in script.read_text() and list(script.parent.glob(f"patches/.{stem}.h5.tmp.*")):
            return script.parent
    return None


def processes_in(task_dir: Path, command: str) -> list[int]:
    """Pids of our processes running `command` (a substring of the command line) with task_dir as cwd."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and Path(os.readlink(proc / "cwd")) == task_dir
                and command in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def kill_embedding(run: subprocess.Popen[str], tmp: Path, stem: str, besides: Path | None = None) -> Path:
    """SIGKILL to `atlaspatch embed-patches` once it writes features (in a task dir other than `besides`)."""
    task = wait_for("EMBED_PATCHES writing features", lambda: embedding_task_dir(tmp / "work", stem, besides), run)
    for pid in wait_for("the embed-patches process", lambda: processes_in(task, "embed-patches"), run, timeout=10):
        os.kill(pid, signal.SIGKILL)
    return task


def kill_group(run: subprocess.Popen[str]) -> None:
    """SIGKILL to whatever is left of the run's process group (the JVM and its tasks), once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)


def finish(run: subprocess.Popen[str], tmp: Path, timeout: float = 300) -> str:
    run.wait(timeout=timeout)
    return (tmp / "nextflow.out").read_text()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, fault_models: Path) -> Path:
    """The reference: the same run, undisturbed (and not slowed down)."""
    tmp = tmp_path_factory.mktemp("nf-clean")
    result = nextflow(tmp, *run_args(tmp, cmu_svs, fault_models), env=env_for(tmp, "0"))
    assert result.returncode == 0, result.output[-4000:]
    return tmp / "results" / "patches" / f"{cmu_svs.stem}.h5"


def assert_same_h5(ours: Path, clean: Path) -> None:
    """Same coords, features, slide embedding and attrs, but for per-run timestamps and durations."""
    with h5py.File(ours) as a, h5py.File(clean) as b:
        assert set(a.keys()) == set(b.keys())
        assert attrs(a).keys() == attrs(b).keys()
        assert all(same_value(v, b.attrs[k]) for k, v in attrs(a).items())
        assert a["coords"].shape[0] > 50 and np.array_equal(a["coords"][()], b["coords"][()])
        for name in (f"features/{ENCODER}", f"slide_features/{SLIDE_ENCODER}"):
            assert np.array_equal(a[name][()], b[name][()]), name
            skip = RUN_DEPENDENT_ATTRS | {"source_features_sha256"}  # hashes the features' (timestamped) attrs
            assert {k: v for k, v in a[name].attrs.items() if k not in skip} == {
                k: v for k, v in b[name].attrs.items() if k not in skip
            }, name


def assert_resume_redoes_only_embedding(tmp: Path, args: tuple[str | Path, ...], stem: str, clean: Path) -> None:
    """`-resume` takes PREFLIGHT, SEGMENT and TILE from the cache, runs EMBED_PATCHES and ENCODE_SLIDE, and
    publishes the clean run's H5."""
    resumed = nextflow(tmp, *args, "-resume", env=env_for(tmp, "0"))
    assert resumed.returncode == 0, resumed.output[-4000:]
    status = {r["process"]: r["status"] for r in trace_rows(tmp / "results", preflight=True)}
    assert status == {
        "PREFLIGHT": "CACHED",
        "ATLASPATCH:SEGMENT": "CACHED",
        "ATLASPATCH:TILE": "CACHED",
        EMBED: "COMPLETED",
        "ATLASPATCH:ENCODE_SLIDE": "COMPLETED",
    }
    assert_same_h5(tmp / "results" / "patches" / f"{stem}.h5", clean)


def test_a_killed_task_is_retried_and_the_run_completes(tmp_path: Path, cmu_svs: Path, fault_models: Path,
                                                         clean_run: Path) -> None:  # fmt: skip
    """SIGKILL to `atlaspatch embed-patches` mid-run: the task exits 137, which conf/base.config retries once
    (attempt 2, in a fresh work dir); the killed attempt published nothing and left only its temp H5."""
    run = start_nextflow(tmp_path, *run_args(tmp_path, cmu_svs, fault_models), env=env_for(tmp_path, BATCH_SLEEP))
    try:
        task = kill_embedding(run, tmp_path, cmu_svs.stem)
        output = finish(run, tmp_path)
    finally:
        kill_group(run)
    assert run.returncode == 0, output[-4000:]
    assert "terminated with an error exit status (137) -- Execution is retried (1)" in output
    rows = trace_rows(tmp_path / "results")
    attempts = sorted((r["attempt"], r["status"], r["exit"]) for r in rows if r["process"] == EMBED)
    assert attempts == [("1", "FAILED", "137"), ("2", "COMPLETED", "0")]
    assert {r["process"]: r["status"] for r in rows if r["process"] != EMBED} == {
        "ATLASPATCH:SEGMENT": "COMPLETED",
        "ATLASPATCH:TILE": "COMPLETED",
        "ATLASPATCH:ENCODE_SLIDE": "COMPLETED",
    }
    assert not (task / "patches" / f"{cmu_svs.stem}.h5").exists()
    assert list(task.glob(f"patches/.{cmu_svs.stem}.h5.tmp.*"))
    assert_same_h5(tmp_path / "results" / "patches" / f"{cmu_svs.stem}.h5", clean_run)


def test_a_killed_head_resumes_from_the_completed_tasks(tmp_path: Path, cmu_svs: Path, fault_models: Path,
                                                        clean_run: Path) -> None:  # fmt: skip
    """SIGKILL to the Nextflow JVM while EMBED_PATCHES runs, then to its orphaned task (as when the head node
    dies: local tasks die with it). `-resume` takes PREFLIGHT, SEGMENT and TILE from the cache and runs only
    EMBED_PATCHES and ENCODE_SLIDE."""
    args = run_args(tmp_path, cmu_svs, fault_models)
    run = start_nextflow(tmp_path, *args, env=env_for(tmp_path, BATCH_SLEEP))
    try:
        wait_for("EMBED_PATCHES writing features", lambda: embedding_task_dir(tmp_path / "work", cmu_svs.stem), run)
        os.kill(run.pid, signal.SIGKILL)  # the JVM
        run.wait(timeout=30)
    finally:
        kill_group(run)  # the task it left behind
    assert run.returncode == -signal.SIGKILL
    assert not (tmp_path / "results" / "patches").exists()

    assert_resume_redoes_only_embedding(tmp_path, args, cmu_svs.stem, clean_run)


def test_a_task_killed_on_every_attempt_fails_its_slide_and_resume_completes(
    tmp_path: Path, cmu_svs: Path, fault_models: Path, clean_run: Path
) -> None:
    """SIGKILL to `atlaspatch embed-patches` on its first attempt and on its retry (as an OOM kill that more memory
    did not cure): the slide fails alone, the run exits non-zero naming it and nothing is published for it; the
    user's `-resume` redoes only EMBED_PATCHES and ENCODE_SLIDE and publishes the same H5 as a clean run."""
    args = run_args(tmp_path, cmu_svs, fault_models)
    run = start_nextflow(tmp_path, *args, env=env_for(tmp_path, BATCH_SLEEP))
    try:
        first = kill_embedding(run, tmp_path, cmu_svs.stem)
        kill_embedding(run, tmp_path, cmu_svs.stem, besides=first)
        output = finish(run, tmp_path)
    finally:
        kill_group(run)
    assert run.returncode != 0, output[-4000:]
    assert "atlaspatch-nf: 1 slide(s) failed" in output, output[-4000:]
    assert f"{cmu_svs.stem}  {EMBED}  FAILED exit 137" in output
    assert "run the same command again with -resume: only the failed slides are redone" in output
    assert not (tmp_path / "results" / "patches" / f"{cmu_svs.stem}.h5").exists()

    assert_resume_redoes_only_embedding(tmp_path, args, cmu_svs.stem, clean_run)
