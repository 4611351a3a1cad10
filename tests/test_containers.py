"""Containers and the executor/container profiles, kept in step with the package without building an image: the
Dockerfile against pyproject.toml and README.md, containers/build.sh (syntax, shellcheck, the commands it runs), the
profiles as Nextflow's own config parser resolves them (`nextflow config`), and `-profile slurm,singularity,gpu` run
(-stub-run) against a fake sbatch and a fake singularity, reading the job scripts Nextflow writes (Singularity is
not packaged here). The images are built and run for real in tests/test_images.py, Slurm in tests/test_slurm.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
BUILD_SH = CONTAINERS / "build.sh"
DOCKERFILE = CONTAINERS / "Dockerfile"  # both images: the CPU and the CUDA one differ in their torch index
NEXTFLOW = REPO / "tools" / "nextflow" / "nextflow"
HAVE_NEXTFLOW = bool(list((REPO / ".nextflow-lib").glob("nextflow-*.jar")))
needs_nextflow = pytest.mark.skipif(
    not HAVE_NEXTFLOW, reason="no Nextflow runtime in .nextflow-lib/: run tools/nextflow/install.sh (Maven Central)"
)
EXTRAS_NOT_IN_IMAGES = {"test", "bench"}  # development extras; every other extra is a model the images carry

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
VERSION = PROJECT["version"]
IMAGE_EXTRAS = {
    name: reqs for name, reqs in PROJECT["optional-dependencies"].items() if name not in EXTRAS_NOT_IN_IMAGES
}


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile parsing


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(" ".join((pending + line).split()))
        pending = ""
    return out


def build_args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults (the first default of each name)."""
    args: dict[str, str] = {}
    for instr in instructions(dockerfile):
        match = re.fullmatch(r"ARG (\w+)=(\S*)", instr)
        if match:
            args.setdefault(match[1], match[2].strip("\"'"))
    return args


def shell_commands(dockerfile: Path) -> list[str]:
    """Every command of every RUN (split on &&)."""
    return [
        cmd.strip() for instr in instructions(dockerfile) if instr.startswith("RUN ") for cmd in instr[4:].split("&&")
    ]


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of the `pip install` commands (env assignments and options kept)."""
    return [shlex.split(cmd) for cmd in shell_commands(dockerfile) if re.search(r"\bpip install\b", cmd)]


def installed_extras(dockerfile: Path) -> set[str]:
    """Extras of this package installed from its source tree (`.[a,b]`, `/path/to/src[a,b]`)."""
    found: set[str] = set()
    for args in pip_installs(dockerfile):
        for arg in args:
            match = re.fullmatch(r"(?:\.|/[\w./-]*)\[([\w,-]+)\]", arg)
            if match:
                found.update(match[1].split(","))
    return found


def installed_requirements(dockerfile: Path) -> dict[str, list[str]]:
    """Requirements installed by name (`'sam2>=1.1'`, ARG defaults substituted) -> the whole command."""
    defaults = build_args(dockerfile)
    found: dict[str, list[str]] = {}
    for args in pip_installs(dockerfile):
        after_install = args[args.index("install") + 1 :]
        for prev, arg in zip(["install", *after_install], after_install, strict=False):
            if arg.startswith("-") or prev in {"-c", "--constraint", "-r", "--index-url", "--extra-index-url"}:
                continue
            try:
                requirement = Requirement(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], arg))
            except InvalidRequirement:
                continue  # the package itself (`.[extras]`, a path)
            found[str(requirement)] = args
    return found


# ---------------------------------------------------------------------------------------------------------------
# The images against pyproject.toml and README.md


def test_the_image_python_is_allowed_by_pyproject_and_the_base_is_a_build_argument() -> None:
    args = build_args(DOCKERFILE)
    python = args["PYTHON_VERSION"]
    assert Version(python) in SpecifierSet(PROJECT["requires-python"]), (python, PROJECT["requires-python"])
    # the public image users pull by default; CI passes a stand-in built from Debian packages
    assert args["BASE_IMAGE"] == "python:${PYTHON_VERSION}-slim-bookworm"
    assert [i for i in instructions(DOCKERFILE) if i.startswith("FROM ")] == ["FROM ${BASE_IMAGE}"]
    assert any("PYTHON_VERSION" in cmd and "sys.version_info" in cmd for cmd in shell_commands(DOCKERFILE))


def test_every_requirement_of_the_image_extras_applies_on_the_image_python() -> None:
    """No requirement of an extra the images carry may be dropped by its marker (moozy needs Python >= 3.11)."""
    python = build_args(DOCKERFILE)["PYTHON_VERSION"]
    environment = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    dropped = [
        f"{extra}: {req}"
        for extra, reqs in IMAGE_EXTRAS.items()
        for req in map(Requirement, reqs)
        if req.marker is not None and not Marker(str(req.marker)).evaluate(environment)
    ]
    assert not dropped, f"on Python {python} the images would lack: {dropped}"


def test_image_installs_every_model_extra() -> None:
    extras = installed_extras(DOCKERFILE)
    by_name = installed_requirements(DOCKERFILE)
    missing = [
        extra
        for extra, reqs in IMAGE_EXTRAS.items()
        if extra not in extras and not all(str(Requirement(r)) in by_name for r in reqs)
    ]
    assert not missing, f"the Dockerfile does not install the extras {missing} (pyproject: {sorted(IMAGE_EXTRAS)})"
    assert not extras & EXTRAS_NOT_IN_IMAGES, "the Dockerfile installs development extras"


def readme_sam2_requirement() -> str:
    """The SAM2 requirement of README.md's test command (the install CI runs)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- test-command -->", 1)[1].split("<!-- /test-command -->", 1)[0]
    match = re.search(r"SAM2_BUILD_CUDA=0 \S*pip install (?:-q )?--no-build-isolation '([^']+)'", block)
    assert match, "README.md's test command no longer installs SAM2 as `SAM2_BUILD_CUDA=0 pip install --no-build-..."
    return match[1]


def test_image_installs_sam2_as_readme_does() -> None:
    requirement = readme_sam2_requirement()
    assert requirement in IMAGE_EXTRAS["sam2"], (requirement, IMAGE_EXTRAS["sam2"])
    command = installed_requirements(DOCKERFILE).get(str(Requirement(requirement)))
    assert command, f"the Dockerfile does not install {requirement!r}"
    assert "SAM2_BUILD_CUDA=0" in command and "--no-build-isolation" in command, command


def test_torch_comes_from_a_build_argument_and_is_checked_against_its_flavour() -> None:
    args = build_args(DOCKERFILE)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_FLAVOUR"] == "cpu"
    assert any(
        "--index-url" in cmd and "torch==${TORCH_VERSION}" in cmd for cmd in map(" ".join, pip_installs(DOCKERFILE))
    ), "torch is not installed from ${TORCH_INDEX_URL}"
    # later installs may not replace that torch
    package_installs = [args for args in pip_installs(DOCKERFILE) if any(re.search(r"\[[\w,-]+\]$", a) for a in args)]
    assert package_installs and all("-c" in args for args in package_installs), "torch not pinned"
    check = next(cmd for cmd in shell_commands(DOCKERFILE) if "TORCH_FLAVOUR" in cmd)
    assert "torch.version.cuda" in check and "cudnn" in check, check
    # the flavour is declared after the installs, so a CPU and a CUDA build from one index share their layers
    order = instructions(DOCKERFILE)
    flavour_at = order.index("ARG TORCH_FLAVOUR=cpu")
    assert all(i < flavour_at for i, instr in enumerate(order) if re.search(r"\bpip install\b", instr))


def test_torch_pins_satisfy_the_package_and_its_model_dependencies() -> None:
    """torch/torchvision of the images against pyproject and against what the installed model packages ask for
    (e.g. moozy: torch>=2.9, sam2: torchvision>=0.20.1)."""
    pins = {
        "torch": Version(build_args(DOCKERFILE)["TORCH_VERSION"]),
        "torchvision": Version(build_args(DOCKERFILE)["TORCHVISION_VERSION"]),
    }
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    for reqs in IMAGE_EXTRAS.values():
        for req in map(Requirement, reqs):
            requirements.append(req)
            with contextlib.suppress(metadata.PackageNotFoundError):  # not installed here: pyproject's pins remain
                requirements += [Requirement(r) for r in metadata.requires(req.name) or []]
    for req in requirements:
        if req.name in pins and (req.marker is None or req.marker.evaluate({"extra": ""})):
            assert pins[req.name] in req.specifier, f"{req} excludes the images' {req.name} {pins[req.name]}"


def test_image_is_set_up_for_unprivileged_tasks_without_weights() -> None:
    dockerfile = DOCKERFILE
    text = dockerfile.read_text()
    env = " ".join(i for i in instructions(dockerfile) if i.startswith("ENV "))
    assert "PYTHONNOUSERSITE=1" in env
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    assert hf_home and hf_home[1].startswith("/tmp/"), "HF_HOME must be writable by any user and in Singularity"
    assert not re.search(r"^USER ", text, re.M), "tasks run as the caller (docker -u / singularity): no USER"
    commands = shell_commands(dockerfile)
    assert "atlaspatch --version" in commands, "no `atlaspatch --version` build check"
    assert any("procps" in cmd for cmd in commands), "Nextflow's task metrics need ps (procps)"
    # model weights are never in the image: they come from --model_dir
    assert not re.search(r"models download|hf_hub_download|snapshot_download|huggingface-cli|hf download", text)
    for label in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text, f"OCI label {label} missing"
    assert f'org.opencontainers.image.licenses="{PROJECT["license"]}"' in text


def test_build_context_holds_only_what_the_images_copy() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", ".dockerignore should allow-list the context"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for instr in instructions(DOCKERFILE):
        if instr.startswith(("COPY ", "ADD ")):
            *sources, _ = instr.split()[1:]
            assert all(s.rstrip("/") in allowed for s in sources), f"{instr} vs {allowed}"


# ---------------------------------------------------------------------------------------------------------------
# Image names: pyproject version == build.sh tags == params.container_cpu / container_gpu


def build_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD_SH), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60
    )


def nextflow_config_value(name: str) -> str:
    """A quoted string setting of nextflow.config, read as text (the resolved values are checked below too)."""
    match = re.search(rf"^\s*{re.escape(name)}\s*=\s*'([^']*)'", (REPO / "nextflow.config").read_text(), re.M)
    assert match, f"{name} not found in nextflow.config"
    return match[1]


def test_image_tags_agree_with_the_package_version_and_the_pipeline() -> None:
    result = build_sh("--print-tags")
    assert result.returncode == 0, result.stderr
    cpu, cuda = result.stdout.split()
    assert (cpu, cuda) == (f"atlaspatch-nf/atlaspatch:{VERSION}", f"atlaspatch-nf/atlaspatch:{VERSION}-cuda")
    assert nextflow_config_value("container_cpu") == cpu
    assert nextflow_config_value("container_gpu") == cuda
    assert nextflow_config_value("version") == VERSION, "manifest.version differs from pyproject's version"


def test_build_sh_is_valid_bash() -> None:
    assert os.access(BUILD_SH, os.X_OK), "containers/build.sh is not executable"
    assert BUILD_SH.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in BUILD_SH.read_text()
    result = subprocess.run(["bash", "-n", str(BUILD_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_build_sh_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, "-x", str(BUILD_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run_commands(output: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def test_build_sh_builds_pushes_and_makes_sifs(tmp_path: Path) -> None:
    result = build_sh("--dry-run", "--push", "registry.example.org/lab/", "--sif", "--sif-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    builds = [c for c in commands if c[:2] == ["docker", "build"]]
    assert [(c[c.index("-f") + 1], c[c.index("-t") + 1], c[-1]) for c in builds] == [
        (str(DOCKERFILE), f"atlaspatch-nf/atlaspatch:{VERSION}", str(REPO)),
        (str(DOCKERFILE), f"atlaspatch-nf/atlaspatch:{VERSION}-cuda", str(REPO)),
    ]
    assert all(f"ATLASPATCH_VERSION={VERSION}" in c for c in builds)
    cpu_args, cuda_args = ({a for i, a in enumerate(c) if i and c[i - 1] == "--build-arg"} for c in builds)
    assert {"TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", "TORCH_FLAVOUR=cpu"} <= cpu_args
    assert {"TORCH_INDEX_URL=https://pypi.org/simple", "TORCH_FLAVOUR=cuda"} <= cuda_args
    pushes = [c[2] for c in commands if c[:2] == ["docker", "push"]]
    assert pushes == [f"registry.example.org/lab/atlaspatch-nf/atlaspatch:{VERSION}{s}" for s in ("", "-cuda")]
    # SIFs named as Nextflow's Singularity/Apptainer cache looks them up (checked for real in the SLURM test)
    sifs = [c[3] for c in commands if c[1:3] == ["build", "--force"]]
    assert sifs == [str(tmp_path / f"atlaspatch-nf-atlaspatch-{VERSION}{s}.img") for s in ("", "-cuda")]

    podman = build_sh("--dry-run", "--cuda", env={"CONTAINER_ENGINE": "podman"})
    assert podman.returncode == 0, podman.stderr
    assert [c[:2] for c in dry_run_commands(podman.stdout)] == [["podman", "build"]]

    # where only PyPI is reachable (CI): a stand-in base, PyPI's torch (the CUDA build, and the CPU image says so),
    # the host's pip cache and CA certificates
    offline = build_sh(
        "--dry-run", "--cpu", "--base", "localhost/base:py3.11", "--torch-index", "https://pypi.org/simple",
        "--pip-cache", str(tmp_path / "pip"), "--host-network", env={"CONTAINER_ENGINE": "podman"},
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    (command,) = dry_run_commands(offline.stdout)
    assert {
        "BASE_IMAGE=localhost/base:py3.11",
        "TORCH_INDEX_URL=https://pypi.org/simple",
        "TORCH_FLAVOUR=cuda",
        "PIP_CACHE_DIR=/var/cache/pip-host",
    } <= {a for i, a in enumerate(command) if command[i - 1] == "--build-arg"}
    assert f"{tmp_path / 'pip'}:/var/cache/pip-host" in command and "/etc/ssl/certs:/etc/ssl/certs:ro" in command
    assert "--network=host" in command and "CUDA torch" in offline.stderr
    docker_cache = build_sh("--dry-run", "--pip-cache", str(tmp_path / "pip"))
    assert docker_cache.returncode == 2 and "podman" in docker_cache.stderr

    for bad in (build_sh("--dry-run", env={"CONTAINER_ENGINE": "rkt"}), build_sh("--no-such-option")):
        assert bad.returncode == 2 and "build.sh:" in bad.stderr
    assert "Usage: containers/build.sh" in build_sh("--help").stdout


# ---------------------------------------------------------------------------------------------------------------
# The profiles as Nextflow resolves them (`nextflow config`: Nextflow's own parser, no network)

PROFILES = (
    "docker",
    "docker,gpu",
    "podman,gpu",
    "singularity",
    "apptainer,gpu",
    "slurm,singularity,gpu",
    "awsbatch,docker,gpu",
    "google,docker,gpu",
)


def nextflow_config(profile: str, nxf_home: Path) -> dict:
    result = subprocess.run(
        [str(NEXTFLOW), "config", "-profile", profile, "-o", "json", str(REPO)],
        capture_output=True,
        text=True,
        # C1 JIT only, as the official launcher runs every command but `run`: half the CPU time
        env={**os.environ, "NXF_HOME": str(nxf_home), "NXF_ANSI_LOG": "false", "NXF_OPTS": "-XX:TieredStopAtLevel=1"},
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    start = result.stdout.index("{")  # warnings may surround the JSON
    config, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
    return config


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    if not HAVE_NEXTFLOW:
        pytest.skip("no Nextflow runtime in .nextflow-lib/: run tools/nextflow/install.sh (Maven Central)")
    home = tmp_path_factory.mktemp("nxf-home")
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(PROFILES, pool.map(lambda p: nextflow_config(p, home), PROFILES), strict=True))


def engines(config: dict) -> set[str]:
    return {e for e in ("docker", "podman", "singularity", "apptainer") if config.get(e, {}).get("enabled")}


def gpu_selector(config: dict) -> dict:
    """withLabel:process_gpu: conf/base.config's settings must survive every profile (a `withLabel:` block inside
    a profile would replace them)."""
    selector = config["process"]["withLabel:process_gpu"]
    assert "accelerator" in selector and "params.container_gpu" in selector["container"], selector
    return selector


@pytest.mark.nextflow
def test_docker_profile_never_prefixes_local_image_names(resolved: dict[str, dict]) -> None:
    for profile in ("docker", "docker,gpu"):
        config = resolved[profile]
        assert engines(config) == {"docker"}, profile
        assert config["docker"]["registry"] == "", "docker.registry must be '' so local images are used as named"
        assert config["docker"]["runOptions"].startswith("-u $(id -u):$(id -g)"), profile
        assert config["process"]["container"] == config["params"]["container_cpu"]
        gpu_selector(config)
    assert "--gpus all" not in resolved["docker"]["docker"]["runOptions"]
    assert "--gpus all" in resolved["docker,gpu"]["docker"]["runOptions"]


@pytest.mark.nextflow
def test_singularity_apptainer_and_podman_profiles(resolved: dict[str, dict]) -> None:
    assert engines(resolved["singularity"]) == {"singularity"}
    assert resolved["singularity"]["singularity"]["autoMounts"] is True
    assert "runOptions" not in resolved["singularity"]["singularity"]
    assert engines(resolved["apptainer,gpu"]) == {"apptainer"}
    assert resolved["apptainer,gpu"]["apptainer"]["runOptions"] == "--nv"
    assert engines(resolved["podman,gpu"]) == {"podman"}
    assert resolved["podman,gpu"]["podman"]["registry"] == ""
    assert "nvidia.com/gpu" in resolved["podman,gpu"]["podman"]["runOptions"]
    for profile in ("singularity", "apptainer,gpu", "podman,gpu"):
        assert resolved[profile]["process"]["container"] == resolved[profile]["params"]["container_cpu"]


@pytest.mark.nextflow
def test_slurm_singularity_gpu_profile(resolved: dict[str, dict]) -> None:
    config = resolved["slurm,singularity,gpu"]
    assert config["process"]["executor"] == "slurm"
    assert engines(config) == {"singularity"}
    assert config["singularity"]["runOptions"] == "--nv"
    selector = gpu_selector(config)
    assert (
        "'--gres=gpu:1'" in selector["clusterOptions"]
        and "workflow.profile.contains('gpu')" in selector["clusterOptions"]
    )
    assert "params.slurm_gpu_queue" in selector["queue"]
    slurm = config["executor"]["$slurm"]  # scoped: PREFLIGHT's local executor keeps its own polling
    assert slurm["queueSize"] > 0 and slurm["pollInterval"] == "5 sec"
    assert "pollInterval" not in config["executor"]
    assert config["process"]["withName:PREFLIGHT"]["executor"] == "local"  # the parameter check never queues


@pytest.mark.nextflow
def test_cloud_profiles(resolved: dict[str, dict]) -> None:
    aws = resolved["awsbatch,docker,gpu"]
    assert aws["process"]["executor"] == "awsbatch"
    assert aws["aws"]["batch"]["cliPath"].endswith("/aws")
    assert "params.awsbatch_gpu_queue" in gpu_selector(aws)["queue"]
    assert engines(aws) == {"docker"} and aws["docker"]["registry"] == ""

    google = resolved["google,docker,gpu"]
    assert google["process"]["executor"] == "google-batch"
    assert google["google"]["location"] and google["google"]["batch"]["spot"] is False
    assert google["google"]["batch"]["installGpuDrivers"] is True
    accelerator = gpu_selector(google)["accelerator"]
    assert "nvidia-tesla-t4" in accelerator and "workflow.profile.contains('gpu')" in accelerator
    for cloud in (aws, google):  # object-store work dirs: PREFLIGHT runs on the cloud executor like every task
        assert "executor" not in cloud["process"]["withName:PREFLIGHT"]


# ---------------------------------------------------------------------------------------------------------------
# -profile test,slurm,singularity[,gpu] run for real against a fake sbatch and a fake singularity

FAKE_SBATCH = """#!/usr/bin/env bash
# fake sbatch: run the job script now, answer as SLURM does
bash "${@: -1}" > /dev/null 2>&1 || true
echo "Submitted batch job $((RANDOM + 1000))"
"""
FAKE_SQUEUE = "#!/usr/bin/env bash\nexit 0\n"
FAKE_SINGULARITY = """#!/usr/bin/env bash
# fake singularity: `exec [options] IMAGE COMMAND...` runs COMMAND here with the SINGULARITYENV_* variables
[ "$1" = exec ] || exit 0
shift
while [ $# -gt 0 ]; do case "$1" in *.img|*.sif) shift; break ;; *) shift ;; esac; done
for v in $(compgen -e); do case "$v" in SINGULARITYENV_*) export "${v#SINGULARITYENV_}=${!v}" ;; esac; done
exec "$@"
"""


def fake_slurm_run(tmp: Path, profile: str, slide: Path, sif_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    fake_bin = tmp / "bin"
    fake_bin.mkdir(parents=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SQUEUE)):
        (fake_bin / name).write_text(text)
    (fake_bin / "singularity").write_text(FAKE_SINGULARITY)
    for script in fake_bin.iterdir():
        script.chmod(0o755)
    fast = tmp / "fast-polling.config"
    fast.write_text("executor.pollInterval = '200 millis'\nexecutor.queueStatInterval = '1 sec'\n")
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(fake_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "NXF_HOME": str(tmp / ".nxf-home"),
        "NXF_ANSI_LOG": "false",
        "NXF_SINGULARITY_CACHEDIR": str(sif_dir),
    }
    args = ["--input", str(slide), "--outdir", str(tmp / "results"), "-work-dir", str(tmp / "work")]
    args += ["--slurm_queue", "cpuq", "--slurm_gpu_queue", "gpuq", "--slurm_cluster_options=--account=lab"]
    result = subprocess.run(
        [str(NEXTFLOW), "run", str(REPO), "-profile", profile, "-stub-run", "-c", str(fast), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    jobs = {}
    for script in (tmp / "work").glob("*/*/.command.run"):
        text = script.read_text()
        name = re.search(r"^#SBATCH -J nf-(\S+)", text, re.M)
        if name:
            jobs[name[1].split("_(")[0]] = text
    return result, jobs


def sbatch_options(job: str) -> list[str]:
    return [tok for line in re.findall(r"^#SBATCH (.+)$", job, re.M) for tok in shlex.split(line)]


@needs_nextflow
@pytest.mark.nextflow
def test_slurm_singularity_gpu_jobs(tmp_path: Path, slides_dir: Path) -> None:
    slide = slides_dir / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip(f"no CMU-1-Small-Region.svs in {slides_dir}")
    # the SIFs as build.sh --sif names them, where Nextflow looks for them (no pull)
    sif_dir = tmp_path / "sif"
    sif_dir.mkdir()
    cpu_tag, cuda_tag = build_sh("--print-tags").stdout.split()
    sif_of = {tag: f"{tag.replace('/', '-').replace(':', '-')}.img" for tag in (cpu_tag, cuda_tag)}
    for name in sif_of.values():
        (sif_dir / name).touch()

    profiles = {"gpu": "test,slurm,singularity,gpu", "cpu": "test,slurm,singularity"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(
            zip(
                profiles,
                pool.map(lambda kind: fake_slurm_run(tmp_path / kind, profiles[kind], slide, sif_dir), profiles),
                strict=True,
            )
        )
    for kind, (result, jobs) in runs.items():
        assert result.returncode == 0, f"{kind}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        assert {"ATLASPATCH_SEGMENT", "ATLASPATCH_TILE"} <= set(jobs), (kind, sorted(jobs))
        assert "PREFLIGHT" not in jobs, kind  # run on the head node (local executor), not submitted
        assert "Submitted process > PREFLIGHT" in result.stdout, kind
        assert (tmp_path / kind / "results" / "patches" / f"{slide.stem}.h5").exists()
        tile = jobs["ATLASPATCH_TILE"]  # not a GPU task: the CPU partition and image, no GPU request
        assert {"-p", "cpuq", "--account=lab"} <= set(sbatch_options(tile)), kind
        assert not any(opt.startswith(("--gres", "--gpus")) for opt in sbatch_options(tile)), kind
        assert "singularity exec " in tile and str(sif_dir / sif_of[cpu_tag]) in tile, kind

    gpu_segment = runs["gpu"][1]["ATLASPATCH_SEGMENT"]  # process_gpu under -profile gpu
    options = sbatch_options(gpu_segment)
    assert options[options.index("-p") + 1] == "gpuq"
    assert {"--account=lab", "--gres=gpu:1"} <= set(options)
    launch = next(line for line in gpu_segment.splitlines() if "singularity exec " in line)
    assert " --nv " in launch and str(sif_dir / sif_of[cuda_tag]) in launch

    cpu_segment = runs["cpu"][1]["ATLASPATCH_SEGMENT"]  # the same task without -profile gpu: a CPU job
    options = sbatch_options(cpu_segment)
    assert options[options.index("-p") + 1] == "cpuq" and "--gres=gpu:1" not in options
    launch = next(line for line in cpu_segment.splitlines() if "singularity exec " in line)
    assert " --nv " not in launch and str(sif_dir / sif_of[cpu_tag]) in launch
