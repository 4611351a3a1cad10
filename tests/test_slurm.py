"""The pipeline on a real Slurm cluster (-profile slurm): every slide task through sbatch, the H5s equal to the local
executor's, a bad slide failing alone, -resume, a job that Slurm kills retried with more memory, a submission that
sbatch refuses stopping the run at once with sbatch's message, and requests capped to the cluster's largest node.

Needs a cluster answering `sinfo` on this machine, with a shared filesystem (a single node is one): .ci/run starts
one with tools/slurm/slurm-up.sh. Without one these tests skip, unless ATLASPATCH_REQUIRE names `slurm`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline_runs import (
    HAVE_NEXTFLOW,
    NEXTFLOW,
    REPO,
    VENV_BIN,
    assert_same_results,
    nextflow_run,
    path_without_this_venv,
    trace_rows,
    unavailable,
)

pytestmark = [pytest.mark.nextflow, pytest.mark.slurm]

PATH_WITH_VENV = f"{VENV_BIN}{os.pathsep}{path_without_this_venv()}"
SLOW_PLUGIN = REPO / "tests" / "plugins" / "slow_resnet18.py"
SLOW_ENCODER = "slow_resnet18"
GEOMETRY = ["--patch_size", "224", "--target_mag", "20", "--segmenter", "otsu", "--device", "cpu"]


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """The default partition's node: {'partition', 'cpus', 'memory_mb'}."""
    if not HAVE_NEXTFLOW:
        unavailable("slurm", "no Nextflow runtime in .nextflow-lib/ (tools/nextflow/install.sh)")
    if not shutil.which("sinfo"):
        unavailable("slurm", "no Slurm on this machine (sudo tools/slurm/slurm-up.sh starts a single-node one)")
    result = subprocess.run(["sinfo", "--noheader", "--format", "%P %c %m %T"], capture_output=True, text=True)
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    default = [r for r in rows if r[0].endswith("*") and r[3] in {"idle", "mixed", "allocated", "completing"}]
    if result.returncode != 0 or not default:
        unavailable("slurm", f"Slurm does not answer with an idle node: {result.stdout}{result.stderr}".strip())
    partition, cpus, memory, _ = default[0]
    return {"partition": partition.rstrip("*"), "cpus": cpus, "memory_mb": memory}


def job_state(job_id: str) -> str:
    result = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    match = re.search(r"JobState=(\S+)", result.stdout)
    return match[1] if match else f"unknown ({result.stderr.strip()})"


def sbatch_options(workdir: str) -> list[str]:
    wrapper = (Path(workdir) / ".command.run").read_text()
    return [opt for line in re.findall(r"^#SBATCH (.+)$", wrapper, re.M) for opt in line.split()]


def slide_folder(root: Path, *slides: Path) -> Path:
    folder = root / "slides"
    folder.mkdir(parents=True)
    for slide in slides:
        (folder / slide.name).symlink_to(slide)
    return folder


def test_the_test_profile_through_slurm_matches_the_local_run(
    cluster: dict[str, str], tmp_path: Path, cmu_svs: Path, tiny_svs: Path, boxes_tiff: Path
) -> None:
    """Two good slides and one that fails (boxes-synthetic.tiff: an implausible mpp): the bad one fails alone, the
    good ones equal the local executor's run, every slide task was a Slurm job; -resume redoes only the bad one."""
    folder = slide_folder(tmp_path, cmu_svs, tiny_svs, boxes_tiff)
    common = ["--input", folder, "-work-dir"]
    local = nextflow_run(tmp_path / "local", "-profile", "test", *common, tmp_path / "local" / "work",
                         "--outdir", tmp_path / "local" / "results", path=PATH_WITH_VENV)  # fmt: skip
    slurm_args = ["-profile", "test,slurm", *common, tmp_path / "slurm" / "work",
                  "--outdir", tmp_path / "slurm" / "results"]  # fmt: skip
    slurm = nextflow_run(tmp_path / "slurm", *slurm_args, path=PATH_WITH_VENV)
    for run in (local, slurm):
        assert run.returncode != 0, run.output[-4000:]
        assert "1 slide(s) failed, the other slides completed" in run.output, run.output[-4000:]
        assert "boxes-synthetic" in run.output
    names = assert_same_results(tmp_path / "slurm" / "results", tmp_path / "local" / "results")
    assert names == sorted([f"{cmu_svs.stem}.h5", f"{tiny_svs.stem}.h5"])

    rows = trace_rows(tmp_path / "slurm" / "results")
    slide_tasks = [r for r in rows if r["process"] != "PREFLIGHT"]
    assert len(slide_tasks) == 5  # SEGMENT x 3, TILE x 2: the bad slide fails in SEGMENT
    for row in slide_tasks:
        assert row["native_id"].isdigit(), row  # a Slurm job id
        state = job_state(row["native_id"])
        assert state == ("FAILED" if row["status"] == "FAILED" else "COMPLETED"), (row["name"], state)
        assert "-J" in sbatch_options(row["workdir"]), row["name"]
    failed = [r for r in slide_tasks if r["status"] == "FAILED"]
    assert [r["tag"] for r in failed] == ["boxes-synthetic"]
    preflight = next(r for r in rows if r["process"] == "PREFLIGHT")
    assert not preflight["native_id"].isdigit() or job_state(preflight["native_id"]).startswith("unknown")

    resumed = nextflow_run(tmp_path / "slurm", *slurm_args, "-resume", path=PATH_WITH_VENV)
    assert resumed.returncode != 0
    rows = [r for r in trace_rows(tmp_path / "slurm" / "results") if r["process"] != "PREFLIGHT"]
    assert {r["tag"] for r in rows if r["status"] != "CACHED"} == {"boxes-synthetic"}, rows
    assert_same_results(tmp_path / "slurm" / "results", tmp_path / "local" / "results")


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    root = tmp_path_factory.mktemp("slurm-models")
    (root / SLOW_ENCODER).mkdir()
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    torch.save(state, root / SLOW_ENCODER / "resnet18.pth")
    return root


def test_a_job_slurm_kills_for_memory_is_retried_with_more(
    cluster: dict[str, str], tmp_path: Path, cmu_svs: Path, slow_models: Path
) -> None:
    """EMBED_PATCHES asks for too little memory on its first attempt: Slurm kills the job (OverMemoryKill); the
    retry asks for more and completes, and the H5 equals a run that was never killed."""
    folder = slide_folder(tmp_path, cmu_svs)
    starved = tmp_path / "starved.config"
    starved.write_text(
        "process { withName: '.*:EMBED_PATCHES' { memory = { task.attempt == 1 ? 150.MB : 4.GB } } }\n"
        # a job killed outright leaves no .exitcode: wait less than Nextflow's 270 s before taking it for dead
        "executor { $slurm { exitReadTimeout = '20 sec' } }\n"
    )
    args = ["--input", folder, *GEOMETRY, "--patch_encoders", SLOW_ENCODER, "--feature_plugin", SLOW_PLUGIN,
            "--model_dir", slow_models, "--feature_precision", "float32", "--feature_num_workers", "0"]  # fmt: skip
    env = {"ATLASPATCH_TEST_BATCH_SLEEP": "3", "HF_HUB_OFFLINE": "1"}
    killed = nextflow_run(tmp_path / "slurm", "-profile", "slurm", "-c", starved, *args,
                          "--outdir", tmp_path / "slurm" / "results", "-work-dir", tmp_path / "slurm" / "work",
                          path=PATH_WITH_VENV, env=env)  # fmt: skip
    assert killed.returncode == 0, killed.output[-5000:]
    attempts = [r for r in trace_rows(tmp_path / "slurm" / "results") if r["process"] == "ATLASPATCH:EMBED_PATCHES"]
    assert [(r["attempt"], r["status"]) for r in attempts] == [("1", "FAILED"), ("2", "COMPLETED")], attempts
    first = attempts[0]
    assert job_state(first["native_id"]) in {"OUT_OF_MEMORY", "FAILED", "CANCELLED"}, job_state(first["native_id"])
    options = sbatch_options(attempts[1]["workdir"])
    assert options[options.index("--mem") + 1] == "4096M", options  # the retry's memory, asked of Slurm

    clean = nextflow_run(tmp_path / "local", "-profile", "test", *args, "--outdir", tmp_path / "local" / "results",
                         "-work-dir", tmp_path / "local" / "work", path=PATH_WITH_VENV,
                         env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert clean.returncode == 0, clean.output[-4000:]
    assert_same_results(tmp_path / "slurm" / "results", tmp_path / "local" / "results")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slurm_queue", "no_such_partition"], "invalid partition"),
        (["-profile", "test,slurm,gpu"], "Invalid generic resource"),
    ],
    ids=["unknown-partition", "gpu-on-a-cluster-without-gpus"],
)
def test_a_submission_sbatch_refuses_stops_the_run_with_its_message(
    cluster: dict[str, str], tmp_path: Path, cmu_svs: Path, extra: list[str], message: str
) -> None:
    profile = [] if "-profile" in extra else ["-profile", "test,slurm"]
    run = nextflow_run(tmp_path, *profile, *extra, "--input", cmu_svs, "--outdir", tmp_path / "results",
                       "-work-dir", tmp_path / "work", path=PATH_WITH_VENV, timeout=240)  # fmt: skip
    assert run.returncode != 0, run.output[-4000:]
    assert message.lower() in run.output.lower(), run.output[-4000:]
    assert not list((tmp_path / "results").glob("patches/*.h5"))


def test_requests_are_capped_to_the_largest_node(cluster: dict[str, str], tmp_path: Path) -> None:
    """process_medium asks for 6 CPUs and 36 GB: under -profile slurm no job asks for more than the node has (it
    would pend forever), and --max_cpus / --max_memory / --max_time set the caps explicitly."""
    result = subprocess.run(
        [str(NEXTFLOW), "config", "-profile", "slurm", str(REPO)],
        capture_output=True,
        text=True,
        env={**os.environ, "NXF_HOME": str(tmp_path / ".nxf-home")},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    (limits,) = re.findall(r"resourceLimits = (\[.*\])", result.stdout)
    memory_gb = int(cluster["memory_mb"]) / 1024
    assert f"cpus:{cluster['cpus']}" in limits, limits
    shown = float(re.search(r"memory:'([\d.]+) GB'", limits)[1])
    assert abs(shown - memory_gb) < 0.06, (limits, memory_gb)


def test_job_arrays_submit_each_stage_once(
    cluster: dict[str, str], tmp_path: Path, cmu_svs: Path, tiny_svs: Path
) -> None:
    """--slurm_array 2: each stage's two tasks are one Slurm array job (ids N_0, N_1); the results are the same."""
    folder = slide_folder(tmp_path, cmu_svs, tiny_svs)
    runs = {}
    for name, extra in (("local", ["-profile", "test"]), ("array", ["-profile", "test,slurm", "--slurm_array", "2"])):
        runs[name] = nextflow_run(tmp_path / name, *extra, "--input", folder, "--outdir", tmp_path / name / "results",
                                  "-work-dir", tmp_path / name / "work", path=PATH_WITH_VENV)  # fmt: skip
    # (tiny-synthetic is tiled to 0 patches: a finished H5 for these stages, as for the CLI)
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.output[-4000:])
    rows = [r for r in trace_rows(tmp_path / "array" / "results") if r["process"] != "PREFLIGHT"]
    by_process: dict[str, set[str]] = {}
    for row in rows:
        job, _, index = row["native_id"].partition("_")
        assert job.isdigit() and index in {"0", "1"}, row
        by_process.setdefault(row["process"], set()).add(job)
    assert by_process.keys() == {"ATLASPATCH:SEGMENT", "ATLASPATCH:TILE"}
    assert all(len(jobs) == 1 for jobs in by_process.values()), by_process
    assert_same_results(tmp_path / "array" / "results", tmp_path / "local" / "results")
