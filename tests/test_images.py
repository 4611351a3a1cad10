"""The container images built for real with podman (containers/build.sh), the CLI run inside them, and the pipeline
run with -profile test,podman: every task inside the CPU image, the published H5s equal to the local executor's.

Building means an 8 GB image (where only PyPI is reachable, its torch is PyPI's CUDA build), so these tests run only
when ATLASPATCH_REQUIRE names `containers` (and `cuda-image` for the CUDA image), as .ci/run does after
tools/podman/engine-up.sh. Build settings come from the environment:
  ATLASPATCH_BASE_IMAGE    --base for build.sh (CI: the Debian-built stand-in of python:3.11-slim-bookworm)
  ATLASPATCH_TORCH_INDEX   --torch-index (CI: https://pypi.org/simple)
  ATLASPATCH_BUILD_OPTS    further build.sh options (CI: --pip-cache DIR --host-network)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from pipeline_runs import (
    HAVE_NEXTFLOW,
    REPO,
    VENV_BIN,
    assert_same_results,
    nextflow_run,
    path_without_this_venv,
    required,
    trace_rows,
    unavailable,
)

pytestmark = [pytest.mark.nextflow, pytest.mark.containers]

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BUILD_SH = REPO / "containers" / "build.sh"
PLUGIN = REPO / "examples" / "feature_plugins" / "my_resnet18.py"
ENCODER = "my_resnet18"
SLIDE_ENCODER = f"mean-{ENCODER}"


def podman(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def build(kind: str) -> str:
    """containers/build.sh --<kind> with podman; returns the image name."""
    if not required("containers"):
        pytest.skip("set ATLASPATCH_REQUIRE=containers to build and run the images (podman: tools/podman/engine-up.sh)")
    if not shutil.which("podman") or podman("info").returncode != 0:
        unavailable("containers", "podman is not installed or cannot run (tools/podman/engine-up.sh sets it up)")
    options = [f"--{kind}"]
    if os.environ.get("ATLASPATCH_BASE_IMAGE"):
        options += ["--base", os.environ["ATLASPATCH_BASE_IMAGE"]]
    if os.environ.get("ATLASPATCH_TORCH_INDEX"):
        options += ["--torch-index", os.environ["ATLASPATCH_TORCH_INDEX"]]
    options += shlex.split(os.environ.get("ATLASPATCH_BUILD_OPTS", ""))
    result = subprocess.run(
        ["bash", str(BUILD_SH), *options],
        env={**os.environ, "CONTAINER_ENGINE": "podman"},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    (image,) = subprocess.run(
        ["bash", str(BUILD_SH), f"--{kind}", "--print-tags"], capture_output=True, text=True, check=True
    ).stdout.split()
    return image


def expected_flavour(kind: str) -> str:
    index = os.environ.get("ATLASPATCH_TORCH_INDEX", "")
    return "cpu" if kind == "cpu" and (not index or index.rstrip("/").endswith("/whl/cpu")) else "cuda"


def in_image(image: str, *command: str) -> str:
    result = podman("run", "--rm", image, *command)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return build("cpu")


def torch_in(image: str) -> dict[str, object]:
    probe = (
        "import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
        "'cudnn': torch.backends.cudnn.version() if torch.version.cuda else None}))"
    )
    return json.loads(in_image(image, "python", "-c", probe).strip().splitlines()[-1])


def label(image: str, name: str) -> str:
    result = podman("image", "inspect", "--format", f'{{{{index .Labels "{name}"}}}}', image)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_cpu_image_runs_the_cli(cpu_image: str) -> None:
    assert cpu_image == f"atlaspatch-nf/atlaspatch:{VERSION}"
    assert in_image(cpu_image, "atlaspatch", "--version").strip() == f"atlaspatch {VERSION}"
    models = in_image(cpu_image, "atlaspatch", "models")
    for name in ("sam2", "conch_v15", "uni_v2", "lunit_vit_small_patch8_dino", "titan", "prism", "moozy"):
        assert name in models, f"`atlaspatch models` in the image does not list {name}"
    # the image says which torch it carries, and that is the torch it has
    flavour = expected_flavour("cpu")
    assert label(cpu_image, "io.github.atlaspatch-nf.torch") == flavour
    torch = torch_in(cpu_image)
    assert (torch["cuda"] is not None) == (flavour == "cuda"), torch
    assert label(cpu_image, "org.opencontainers.image.version") == VERSION
    # runs as any user (Nextflow's docker profile: -u uid:gid), caches under /tmp
    as_nobody = podman("run", "--rm", "-u", "65534:65534", cpu_image, "atlaspatch", "--version")
    assert as_nobody.returncode == 0, as_nobody.stderr


def test_the_cuda_image_carries_cuda_torch_and_cudnn() -> None:
    if not required("cuda-image"):
        pytest.skip("set ATLASPATCH_REQUIRE=containers,cuda-image to build the CUDA image too")
    image = build("cuda")
    assert image == f"atlaspatch-nf/atlaspatch:{VERSION}-cuda"
    torch = torch_in(image)
    assert torch["cuda"], f"the CUDA image's torch is a CPU build: {torch}"
    assert isinstance(torch["cudnn"], int) and torch["cudnn"] > 0, torch
    assert label(image, "io.github.atlaspatch-nf.torch") == "cuda"
    assert in_image(image, "atlaspatch", "--version").strip() == f"atlaspatch {VERSION}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin's weights file with random weights of its real architecture, in its on-disk format."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    root = tmp_path_factory.mktemp("image-models")
    (root / ENCODER).mkdir()
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    torch.save(state, root / ENCODER / "resnet18.pth")
    return root


def pipeline_args(tmp: Path, slides: Path, outdir: Path, model_dir: Path, profile: str) -> list[str | Path]:
    return [
        "-profile", profile, "--input", slides, "--outdir", outdir, "-work-dir", tmp / "work",
        "--slide_encoders", SLIDE_ENCODER, "--feature_plugin", PLUGIN, "--model_dir", model_dir,
        "--feature_precision", "float32", "--feature_num_workers", "1",
    ]  # fmt: skip


def test_the_pipeline_runs_every_task_in_the_image_and_matches_the_local_run(
    cpu_image: str, model_dir: Path, slides_dir: Path, tmp_path: Path
) -> None:
    if not HAVE_NEXTFLOW:
        unavailable("containers", "no Nextflow runtime in .nextflow-lib/ (tools/nextflow/install.sh)")
    # the CMU slide in every format at hand (svs, pyramid TIFF, DICOM series; a clean clone has the svs only)
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("CMU-1-Small-Region.svs", "CMU-1-Small-Region.pyramid.tiff", "CMU-1-Small-Region.dicom"):
        if (slides_dir / name).exists():
            (slides / name).symlink_to(slides_dir / name)
    env = {"HF_HUB_OFFLINE": "1"}
    local = nextflow_run(
        tmp_path / "local",
        *pipeline_args(tmp_path / "local", slides, tmp_path / "local" / "results", model_dir, "test"),
        path=f"{VENV_BIN}{os.pathsep}{path_without_this_venv()}",
        env=env,
    )
    assert local.returncode == 0, local.output[-5000:]
    # no atlaspatch on the host's PATH: only the image's can run the tasks
    contained = nextflow_run(
        tmp_path / "podman",
        *pipeline_args(tmp_path / "podman", slides, tmp_path / "podman" / "results", model_dir, "test,podman"),
        path=path_without_this_venv(),
        env=env,
    )
    assert contained.returncode == 0, contained.output[-5000:]

    rows = trace_rows(tmp_path / "podman" / "results")
    processes = {r["process"] for r in rows}
    assert {"PREFLIGHT", "ATLASPATCH:SEGMENT", "ATLASPATCH:TILE", "ATLASPATCH:EMBED_PATCHES"} <= processes
    assert "ATLASPATCH:ENCODE_SLIDE" in processes
    for row in rows:
        assert row["status"] == "COMPLETED", row
        assert row["container"] == cpu_image, row
        wrapper = (Path(row["workdir"]) / ".command.run").read_text()
        launch = [line for line in wrapper.splitlines() if line.strip().startswith("podman run ")]
        assert launch and f" {cpu_image} " in launch[0], f"{row['name']} did not run in {cpu_image}"
    names = assert_same_results(tmp_path / "podman" / "results", tmp_path / "local" / "results")
    assert names == sorted(f"{p.name if p.is_dir() else p.stem}.h5" for p in slides.iterdir())
