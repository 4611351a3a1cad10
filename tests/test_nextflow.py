"""The Nextflow pipeline (main.nf), run for real: Nextflow 25.04.4 from tools/nextflow, local executor, no containers,
`atlaspatch` from this venv on PATH. Compared against the in-process CLI on the same slides."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlaspatch.slides.discovery import find_slides
from conftest import run_atlaspatch

pytestmark = pytest.mark.nextflow

REPO = Path(__file__).resolve().parents[1]
NEXTFLOW = REPO / "tools" / "nextflow" / "nextflow"
GOOD_SLIDES = (
    "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region.pyramid.tiff",
    "CMU-1-Small-Region.dicom",
    "tiny-synthetic.svs",
)
GEOMETRY = ("--patch-size", "224", "--target-mag", "20", "--segmenter", "otsu", "--device", "cpu")
PATH_DEPENDENT_ATTRS = {"creation_date", "wsi_path"}

if not list((REPO / ".nextflow-lib").glob("nextflow-*.jar")):
    pytest.skip(
        "no Nextflow runtime in .nextflow-lib/: run tools/nextflow/install.sh (Maven Central)", allow_module_level=True
    )


def nextflow(
    cwd: Path, *args: str | Path, slides: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`nextflow run <repo> ...` as a user runs it: tasks find this venv's `atlaspatch` first on PATH and inherit
    the launching environment (or `env`, a whole environment, when given)."""
    base = dict(os.environ if env is None else env)
    env = {
        **base,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        "NXF_HOME": str(cwd / ".nxf-home"),
        "NXF_ANSI_LOG": "false",
    }
    if slides is not None:
        env["ATLASPATCH_TEST_DATA"] = str(slides)  # what -profile test reads its slides from
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(NEXTFLOW), "run", str(REPO), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result.output = result.stdout + result.stderr  # type: ignore[attr-defined]
    return result


def trace_rows(outdir: Path, preflight: bool = False) -> list[dict[str, str]]:
    """The newest run's trace (pipeline_info/execution_trace_<timestamp>.txt, tab-separated): the slide tasks, and
    the PREFLIGHT parameter check only when asked for."""
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    assert traces, f"no trace file under {outdir / 'pipeline_info'}"
    with traces[-1].open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [row for row in rows if preflight or row["process"] != "PREFLIGHT"]


def attrs(handle: h5py.File) -> dict[str, object]:
    return {k: v for k, v in handle.attrs.items() if k not in PATH_DEPENDENT_ATTRS}


def same_value(a: object, b: object) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray | list | tuple) else a == b


@pytest.fixture(scope="module")
def good_slides(slides_dir: Path) -> list[Path]:
    found = [slides_dir / name for name in GOOD_SLIDES if (slides_dir / name).exists()]
    if not found:
        pytest.skip(f"no test slides in {slides_dir}")
    return found


@pytest.fixture(scope="module")
def test_profile_run(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path):
    """One real run of `-profile test` (the CMU slides and tiny-synthetic.svs), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("nf-test-profile")
    args = ("-profile", "test", "--outdir", tmp / "results", "-work-dir", tmp / "work")
    result = nextflow(tmp, *args, slides=slides_dir)
    return tmp, args, result


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory: pytest.TempPathFactory, good_slides: list[Path]) -> Path:
    """`atlaspatch segment-and-get-coords` on the same slides (a folder of links to them), in-process pipeline."""
    tmp = tmp_path_factory.mktemp("nf-cli")
    folder = tmp / "slides"
    folder.mkdir()
    for slide in good_slides:
        (folder / slide.name).symlink_to(slide)
    result = run_atlaspatch("segment-and-get-coords", folder, "-o", tmp / "cli", *GEOMETRY)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "cli" / "patches"


def test_test_profile_matches_the_cli(test_profile_run, cli_reference: Path, good_slides: list[Path]) -> None:
    tmp, _, result = test_profile_run
    assert result.returncode == 0, result.output[-4000:]
    published = tmp / "results" / "patches"
    names = sorted(p.name for p in published.iterdir())
    assert names == sorted(p.name for p in cli_reference.glob("*.h5")), "pipeline and CLI found other slides"
    assert len(names) == len(good_slides)
    for name in names:
        with h5py.File(published / name) as ours, h5py.File(cli_reference / name) as cli:
            assert ours["coords"].dtype == np.int32
            assert np.array_equal(ours["coords"][()], cli["coords"][()]), name
            assert set(ours.keys()) == set(cli.keys()), name
            ours_attrs, cli_attrs = attrs(ours), attrs(cli)
            assert ours_attrs.keys() == cli_attrs.keys(), name
            differing = [k for k in ours_attrs if not same_value(ours_attrs[k], cli_attrs[k])]
            assert not differing, f"{name}: attrs differ: {differing}"
    if "CMU-1-Small-Region.svs" in {p.name for p in good_slides}:
        with h5py.File(published / "CMU-1-Small-Region.h5") as handle:
            assert handle["coords"].shape[0] > 50
    # one SEGMENT and one TILE task per slide, all completed; only TILE's H5 is published
    rows = trace_rows(tmp / "results")
    assert sorted(r["process"] for r in rows) == sorted(["ATLASPATCH:SEGMENT", "ATLASPATCH:TILE"] * len(names))
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert (tmp / "results" / "pipeline_info" / "atlaspatch_software_versions.yml").exists()
    # copy-on-write: SEGMENT's own H5 holds tissue but no coords (TILE wrote a new file, never modified its input)
    segment = next(r for r in rows if r["process"] == "ATLASPATCH:SEGMENT")
    with h5py.File(Path(segment["workdir"]) / "patches" / f"{segment['tag']}.h5") as handle:
        assert "coords" not in handle and "tissue" in handle


def test_resume_reexecutes_nothing(test_profile_run, slides_dir: Path) -> None:
    tmp, args, first = test_profile_run
    assert first.returncode == 0, first.output[-4000:]
    result = nextflow(tmp, *args, "-resume", slides=slides_dir)
    assert result.returncode == 0, result.output[-4000:]
    assert "Submitted process" not in result.output
    rows = trace_rows(tmp / "results")
    assert {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]
    assert len(rows) == 2 * len(list((tmp / "results" / "patches").glob("*.h5")))


def _discovery_folder(root: Path, slides_dir: Path) -> Path:
    """Slides named and nested the ways discovery must handle: case-insensitive extensions, a DICOM series folder,
    hidden and unsupported files, slides (and a series) one level down, a dangling link (a slide that will fail), two
    links back up the tree (a loop), an alias of a folder (its slides once), and the run's outdir inside the input
    with pictures the tool wrote there."""
    tiny, dicom = slides_dir / "tiny-synthetic.svs", slides_dir / "CMU-1-Small-Region.dicom"
    if not (tiny.exists() and dicom.exists()):
        pytest.skip(f"tiny-synthetic.svs and CMU-1-Small-Region.dicom are needed in {slides_dir}")
    folder = root / "input"
    for sub in ("series.dicom", "nested/series2"):
        (folder / sub).mkdir(parents=True)
        for dcm in dicom.glob("*.dcm"):
            (folder / sub / dcm.name).symlink_to(dcm)
    (folder / "UPPER.SVS").symlink_to(tiny)
    (folder / ".hidden.svs").symlink_to(tiny)
    (folder / "nested" / "deeper.Tiff").symlink_to(tiny)
    (folder / "notes.txt").write_text("not a slide\n")
    (folder / "gone.svs").symlink_to(root / "nowhere" / "gone.svs")
    for up in ("up1", "up2"):
        (folder / "nested" / up).symlink_to("..", target_is_directory=True)
    (folder / "alias").symlink_to("nested", target_is_directory=True)
    (folder / "results" / "visualization").mkdir(parents=True)
    (folder / "results" / "visualization" / "UPPER.png").write_bytes(b"a picture of an earlier run")
    return folder


@pytest.mark.parametrize("recursive", [False, True], ids=["flat", "recursive"])
def test_stub_run_and_slide_discovery_match_the_cli(tmp_path: Path, slides_dir: Path, recursive: bool) -> None:
    """-stub-run exercises the whole DAG without the tool's work; the slides it makes tasks for are the ones the
    CLI finds in the same folder."""
    folder = _discovery_folder(tmp_path, slides_dir)
    extra = ["--recursive"] if recursive else []
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("wsi,mpp\nUPPER.SVS,0.25\nnosuch.svs,0.3\n")
    extra += ["--mpp_csv", str(mpp_csv)]
    result = nextflow(
        tmp_path,
        "-profile",
        "test",
        "-stub-run",
        "--input",
        folder,
        *extra,
        "--outdir",
        folder / "results",
        "-work-dir",
        tmp_path / "work",
        slides=slides_dir,
    )
    assert result.returncode == 0, result.output[-4000:]
    expected = sorted(f"{s.stem}.h5" for s in find_slides(folder, recursive, output=folder / "results"))
    assert sorted(p.name for p in (folder / "results" / "patches").iterdir()) == expected
    assert ("deeper.h5" in expected) == recursive and "series.dicom.h5" in expected and "UPPER.h5" in expected
    assert "gone.h5" in expected
    assert "--mpp_csv rows that match no slide of this run: nosuch.svs" in result.output
    assert {r["status"] for r in trace_rows(folder / "results")} == {"COMPLETED"}


def test_a_bad_slide_fails_alone_and_the_run_exits_non_zero(tmp_path: Path, cmu_svs: Path, boxes_tiff: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for slide in (cmu_svs, boxes_tiff):
        (folder / slide.name).symlink_to(slide)
    outdir = tmp_path / "results"
    result = nextflow(
        tmp_path, "-profile", "test", "--input", folder, "--outdir", outdir, "-work-dir", tmp_path / "work"
    )
    assert result.returncode != 0, result.output[-4000:]
    assert "boxes-synthetic" in result.output
    assert "1 slide(s) failed" in result.output
    assert [p.name for p in (outdir / "patches").iterdir()] == ["CMU-1-Small-Region.h5"]
    with h5py.File(outdir / "patches" / "CMU-1-Small-Region.h5") as handle:
        assert handle["coords"].shape[0] > 50
    status = {(r["process"], r["tag"]): r["status"] for r in trace_rows(outdir)}
    assert status == {
        ("ATLASPATCH:SEGMENT", "CMU-1-Small-Region"): "COMPLETED",
        ("ATLASPATCH:TILE", "CMU-1-Small-Region"): "COMPLETED",
        ("ATLASPATCH:SEGMENT", "boxes-synthetic"): "FAILED",
    }


# --- EMBED_PATCHES (stage 3, with --patch_encoders) ---------------------------------------------------------------

EXAMPLE_PLUGIN = REPO / "examples" / "feature_plugins" / "my_resnet18.py"
ENCODER = "my_resnet18"


def offline_env(root: Path) -> dict[str, str]:
    """No network for the tasks, and no weights but the ones the test passes: an empty HF home, no model dir env."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "empty-hf-home")}
    return {**{k: v for k, v in os.environ.items() if k not in {"HF_HUB_CACHE", "ATLASPATCH_MODEL_DIR"}}, **env}


def embed_args(tmp: Path, folder: Path, model_dir: Path, outdir: Path) -> tuple[str | Path, ...]:
    return (
        "-profile", "test", "--input", folder, "--outdir", outdir, "-work-dir", tmp / "work",
        "--visualize_grids",
        "--patch_encoders", ENCODER, "--feature_plugin", EXAMPLE_PLUGIN, "--model_dir", model_dir,
        "--feature_device", "cpu", "--feature_precision", "float32", "--feature_num_workers", "1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def embed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin's weights file with random weights of the real architecture (its on-disk format)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    root = tmp_path_factory.mktemp("nf-models")
    (root / ENCODER).mkdir()
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    torch.save(state, root / ENCODER / "resnet18.pth")
    return root


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, embed_model_dir: Path):
    """One real run SEGMENT -> TILE -> EMBED_PATCHES on the CMU slide, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("nf-embed")
    folder = tmp / "slides"
    folder.mkdir()
    (folder / cmu_svs.name).symlink_to(cmu_svs)
    args = embed_args(tmp, folder, embed_model_dir, tmp / "results")
    result = nextflow(tmp, *args, env=offline_env(tmp))
    return tmp, args, result


@pytest.fixture(scope="module")
def cli_embed_reference(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, embed_model_dir: Path) -> Path:
    """The CLI's stage 1+2 then stage 3 on the same slide with the same weights."""
    tmp = tmp_path_factory.mktemp("nf-embed-cli")
    env = offline_env(tmp)
    result = run_atlaspatch("segment-and-get-coords", cmu_svs, "-o", tmp / "tiled", *GEOMETRY, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_atlaspatch(
        "embed-patches", "--slide", cmu_svs, "--h5", tmp / "tiled" / "patches" / f"{cmu_svs.stem}.h5",
        "--encoders", ENCODER, "-o", tmp / "embedded", "--model-dir", embed_model_dir,
        "--feature-plugin", EXAMPLE_PLUGIN, "--feature-device", "cpu", "--feature-precision", "float32",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "embedded" / "patches" / f"{cmu_svs.stem}.h5"


def test_embed_patches_matches_the_cli(embed_run, cli_embed_reference: Path, cmu_svs: Path) -> None:
    tmp, _, result = embed_run
    assert result.returncode == 0, result.output[-4000:]
    results = tmp / "results"
    assert [p.name for p in (results / "patches").iterdir()] == [f"{cmu_svs.stem}.h5"]
    with h5py.File(results / "patches" / f"{cmu_svs.stem}.h5") as ours, h5py.File(cli_embed_reference) as cli:
        assert set(ours.keys()) == set(cli.keys())
        assert np.array_equal(ours["coords"][()], cli["coords"][()])
        features = ours[f"features/{ENCODER}"]
        assert features.dtype == np.float32
        assert features.shape == (ours["coords"].shape[0], 512) and features.shape[0] > 50
        assert np.allclose(features[()], cli[f"features/{ENCODER}"][()], atol=1e-4)
    # TILE's overlay is still published; its H5 is not (only the last stage's)
    assert (results / "visualization" / f"{cmu_svs.stem}.png").exists()
    rows = trace_rows(results)
    assert sorted(r["process"] for r in rows) == ["ATLASPATCH:EMBED_PATCHES", "ATLASPATCH:SEGMENT", "ATLASPATCH:TILE"]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    versions = (results / "pipeline_info" / "atlaspatch_software_versions.yml").read_text()
    assert all(f'"{process}":' in versions for process in ("PREFLIGHT", *(r["process"] for r in rows))), versions
    # copy-on-write: TILE's own H5 has coords but no features; the params reached the stage command
    tile = next(r for r in rows if r["process"] == "ATLASPATCH:TILE")
    with h5py.File(Path(tile["workdir"]) / "patches" / f"{cmu_svs.stem}.h5") as handle:
        assert "coords" in handle and "features" not in handle
    embed = next(r for r in rows if r["process"] == "ATLASPATCH:EMBED_PATCHES")
    script = (Path(embed["workdir"]) / ".command.sh").read_text()
    for option in ("--feature-device cpu", "--feature-precision float32", "--feature-num-workers 1",
                   "--feature-batch-size 32", "--model-dir", "--feature-plugin"):  # fmt: skip
        assert option in script, script


def test_embed_patches_resume_reexecutes_nothing(embed_run) -> None:
    tmp, args, first = embed_run
    assert first.returncode == 0, first.output[-4000:]
    result = nextflow(tmp, *args, "-resume", env=offline_env(tmp))
    assert result.returncode == 0, result.output[-4000:]
    assert "Submitted process" not in result.output
    rows = trace_rows(tmp / "results")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]


def test_missing_weights_fail_the_slide_with_one_line(tmp_path: Path, cmu_svs: Path) -> None:
    """The model dir lacks the encoder's file (and the hub is offline): EMBED_PATCHES fails that slide with the
    tool's one-line error in the summary, and no H5 is published for it (not even TILE's)."""
    folder, empty = tmp_path / "slides", tmp_path / "empty-models"
    folder.mkdir()
    empty.mkdir()
    (folder / cmu_svs.name).symlink_to(cmu_svs)
    outdir = tmp_path / "results"
    result = nextflow(tmp_path, *embed_args(tmp_path, folder, empty, outdir), env=offline_env(tmp_path))
    assert result.returncode != 0, result.output[-4000:]
    assert "1 slide(s) failed" in result.output
    summary = result.output[result.output.index("1 slide(s) failed") :]
    assert f"{cmu_svs.stem}  ATLASPATCH:EMBED_PATCHES  FAILED exit 2" in summary
    assert f"Error: {ENCODER} weights" in summary and "are not on this machine" in summary
    assert "Traceback" not in summary
    status = {r["process"]: r["status"] for r in trace_rows(outdir)}
    assert status == {
        "ATLASPATCH:SEGMENT": "COMPLETED",
        "ATLASPATCH:TILE": "COMPLETED",
        "ATLASPATCH:EMBED_PATCHES": "FAILED",
    }
    assert not list(outdir.glob("patches/*.h5"))
    assert (outdir / "visualization" / f"{cmu_svs.stem}.png").exists()  # TILE's overlay is still published


def test_a_missing_model_dir_is_refused_before_any_task(tmp_path: Path, cmu_svs: Path) -> None:
    args = ("-profile", "test", "--input", cmu_svs, "--outdir", tmp_path / "results", "-work-dir", tmp_path / "work")
    result = nextflow(tmp_path, *args, "--patch_encoders", ENCODER, "--model_dir", "no-such-models")
    assert result.returncode != 0
    assert "--model_dir no-such-models: no such directory" in result.output
    assert "Submitted process" not in result.output


# --- ENCODE_SLIDE (stage 4, with --slide_encoders) -----------------------------------------------------------------

RUN_DEPENDENT_EMBEDDING_ATTRS = {"creation_date", "seconds"}


def test_encode_slide_matches_the_cli(tmp_path: Path, cmu_svs: Path, embed_model_dir: Path) -> None:
    """SEGMENT -> TILE -> EMBED_PATCHES (features the slide encoder needs, resolved by the tool) -> ENCODE_SLIDE
    gives the same H5 content as the in-process `atlaspatch encode-slide` on the same slide and weights."""
    slide_encoder = f"mean-{ENCODER}"
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / cmu_svs.name).symlink_to(cmu_svs)
    outdir = tmp_path / "results"
    args = (
        "-profile", "test", "--input", folder, "--outdir", outdir, "-work-dir", tmp_path / "work",
        "--slide_encoders", slide_encoder, "--feature_plugin", EXAMPLE_PLUGIN, "--model_dir", embed_model_dir,
        "--feature_precision", "float32", "--feature_num_workers", "1",
    )  # fmt: skip
    result = nextflow(tmp_path, *args, env=offline_env(tmp_path))
    assert result.returncode == 0, result.output[-4000:]
    cli = run_atlaspatch(
        "encode-slide", cmu_svs, "-o", tmp_path / "cli", "--slide-encoders", slide_encoder, *GEOMETRY,
        "--feature-plugin", EXAMPLE_PLUGIN, "--model-dir", embed_model_dir, "--feature-precision", "float32",
        "--feature-num-workers", "1", env=offline_env(tmp_path),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    rows = trace_rows(outdir)
    assert sorted(r["process"] for r in rows) == [
        "ATLASPATCH:EMBED_PATCHES", "ATLASPATCH:ENCODE_SLIDE", "ATLASPATCH:SEGMENT", "ATLASPATCH:TILE",
    ]  # fmt: skip
    assert [p.name for p in (outdir / "patches").iterdir()] == [f"{cmu_svs.stem}.h5"]
    with (
        h5py.File(outdir / "patches" / f"{cmu_svs.stem}.h5") as ours,
        h5py.File(tmp_path / "cli" / "patches" / f"{cmu_svs.stem}.h5") as theirs,
    ):
        assert set(ours.keys()) == set(theirs.keys())
        assert attrs(ours).keys() == attrs(theirs).keys()
        assert all(same_value(v, theirs.attrs[k]) for k, v in attrs(ours).items())
        assert np.array_equal(ours["coords"][()], theirs["coords"][()])
        assert np.allclose(ours[f"features/{ENCODER}"][()], theirs[f"features/{ENCODER}"][()], atol=1e-4)
        embedding = ours[f"slide_features/{slide_encoder}"]
        reference = theirs[f"slide_features/{slide_encoder}"]
        assert embedding.shape == (512,) and embedding.dtype == np.float32
        assert np.allclose(embedding[()], reference[()], atol=1e-5)
        skip = RUN_DEPENDENT_EMBEDDING_ATTRS | {"source_features_sha256"}  # the features' creation dates differ
        assert {k: v for k, v in embedding.attrs.items() if k not in skip} == {
            k: v for k, v in reference.attrs.items() if k not in skip
        }
    encode = next(r for r in rows if r["process"] == "ATLASPATCH:ENCODE_SLIDE")
    script = (Path(encode["workdir"]) / ".command.sh").read_text()
    assert f"--slide-encoders '{slide_encoder}'" in script and "--device cpu" in script


# --- parameters: --help, the PREFLIGHT schema check, -params-file -------------------------------------------------


def test_help_prints_the_parameters(tmp_path: Path) -> None:
    result = nextflow(tmp_path, "--help")
    assert result.returncode == 0, result.output[-4000:]
    for text in ("Usage: nextflow run", "Tiling options:", "--patch_size", "(required)", "--slide_encoders",
                 "[default: float16]"):  # fmt: skip
        assert text in result.output, result.output
    assert "Submitted process" not in result.output
    assert not (tmp_path / "null").exists()  # no run reports without an outdir


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--patch-size", "224", "--target-mag", "20"),
         "write --patch_size, --target_mag (snake_case), not --patch-size, --target-mag"),
        (("--patch_size", "224", "--target_mag", "20", "{tiny}"),  # what an unquoted --input glob turns into
         "unexpected argument(s) {tiny}: quote a glob given to --input"),
    ],
)  # fmt: skip
def test_common_command_line_slips_get_a_hint(
    tmp_path: Path, cmu_svs: Path, tiny_svs: Path, extra: tuple[str, ...], message: str
) -> None:
    extra = tuple(arg.format(tiny=tiny_svs) for arg in extra)
    result = nextflow(tmp_path, "--input", cmu_svs, "--outdir", tmp_path / "r", *extra)
    assert result.returncode != 0
    assert message.format(tiny=tiny_svs) in result.output, result.output[-3000:]
    assert "Submitted process" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--segmentr", "otsu", "--tissue_thresh", "3"),
         "--segmentr is not a parameter of this pipeline (did you mean --segmenter?); --tissue_thresh 3 must be <= 1"),
        (("--slide_encoders", "titan,prism"), "titan (512 px @ 20x) and prism (224 px @ 20x) need different patch"),
    ],
)  # fmt: skip
def test_bad_parameters_stop_the_run_before_any_slide_task(
    tmp_path: Path, cmu_svs: Path, extra: tuple[str, ...], message: str
) -> None:
    outdir = tmp_path / "results"
    args = ("-profile", "test", "--input", cmu_svs, "--outdir", outdir, "-work-dir", tmp_path / "work", *extra)
    result = nextflow(tmp_path, *args)
    assert result.returncode != 0
    assert "the parameters were refused before any slide was processed" in result.output
    assert message in result.output, result.output[-3000:]
    assert "Traceback" not in result.output
    rows = trace_rows(outdir, preflight=True)
    assert [(r["process"], r["status"]) for r in rows] == [("PREFLIGHT", "FAILED")]
    assert not (outdir / "patches").exists()


def test_a_params_file_run(tmp_path: Path, cmu_svs: Path) -> None:
    """`-params-file` YAML: its values reach the stages (256-px patches) and pass the PREFLIGHT check."""
    outdir = tmp_path / "results"
    params = tmp_path / "params.yaml"
    params.write_text(
        f"input: '{cmu_svs}'\noutdir: '{outdir}'\npatch_size: 256\ntarget_mag: 20\nsegmenter: otsu\ndevice: cpu\n"
        "tissue_thresh: 0.25\nvisualize_grids: true\n"
    )
    result = nextflow(tmp_path, "-profile", "test", "-params-file", params, "-work-dir", tmp_path / "work")
    assert result.returncode == 0, result.output[-4000:]
    with h5py.File(outdir / "patches" / f"{cmu_svs.stem}.h5") as handle:
        assert handle.attrs["patch_size"] == 256 and handle.attrs["tissue_thresh"] == 0.25
    assert (outdir / "visualization" / f"{cmu_svs.stem}.png").exists()
    status = {r["process"]: r["status"] for r in trace_rows(outdir, preflight=True)}
    assert status == {"PREFLIGHT": "COMPLETED", "ATLASPATCH:SEGMENT": "COMPLETED", "ATLASPATCH:TILE": "COMPLETED"}


# --- --input samplesheet.csv (id,slide[,mpp]) ---------------------------------------------------------------------


def test_a_samplesheet_run(tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path, cmu_dicom: Path) -> None:
    """Rows name their outputs by id (a DICOM series folder included, under the id `patches`, the name of the
    output folder: nothing is written into the series), relative paths start at the sheet's folder, and an mpp column
    overrides the slide's; the H5 content equals a directory run's."""
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "local.svs").symlink_to(cmu_svs)
    sheet = tmp_path / "sheets" / "samplesheet.csv"
    sheet.write_text(f"id,slide,mpp\ncase01,local.svs,\ncase02,{cmu_pyramid},0.25\npatches,{cmu_dicom},\n")
    series = sorted(cmu_dicom.iterdir())
    outdir = tmp_path / "results"
    args = ("-profile", "test", "--input", sheet, "--outdir", outdir, "-work-dir", tmp_path / "work")
    result = nextflow(tmp_path, *args)
    assert result.returncode == 0, result.output[-4000:]
    assert sorted(p.name for p in (outdir / "patches").iterdir()) == ["case01.h5", "case02.h5", "patches.h5"]
    assert sorted(cmu_dicom.iterdir()) == series
    reference = tmp_path / "cli"
    cli = run_atlaspatch("segment-and-get-coords", cmu_svs, "-o", reference, *GEOMETRY)
    assert cli.returncode == 0, cli.stderr
    with (
        h5py.File(outdir / "patches" / "case01.h5") as ours,
        h5py.File(reference / "patches" / f"{cmu_svs.stem}.h5") as theirs,
    ):
        assert np.array_equal(ours["coords"][()], theirs["coords"][()])
        assert ours.attrs["wsi_path"] == str(cmu_svs.resolve())
    with h5py.File(outdir / "patches" / "case02.h5") as handle:
        assert handle.attrs["mpp"] == 0.25  # the samplesheet's mpp, not the slide's 0.499
        assert handle.attrs["patch_size_level0"] != 224  # level 0 is now 40x: 448 px per 20x patch
    with h5py.File(outdir / "patches" / "patches.h5") as handle:
        assert handle["coords"].shape[0] > 50


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("id,slide\ncase 1,{slide}\n", "row 2 id: id must start with a letter or digit"),
        ("id,slide\ncase1,{slide}\ncase1,{slide}\n", "id 'case1' is used by more than one row"),
        ("id,slide,mpp\ncase1,{slide},-1\n", "row 2 mpp: mpp must be a positive number"),
    ],
)
def test_a_bad_samplesheet_stops_the_run_before_any_slide_task(
    tmp_path: Path, cmu_svs: Path, rows: str, message: str
) -> None:
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(rows.format(slide=cmu_svs))
    outdir = tmp_path / "results"
    result = nextflow(tmp_path, "-profile", "test", "--input", sheet, "--outdir", outdir, "-work-dir", tmp_path / "w")
    assert result.returncode != 0
    assert message in result.output, result.output[-3000:]
    assert [r["process"] for r in trace_rows(outdir, preflight=True)] == ["PREFLIGHT"]


def test_a_samplesheet_with_a_missing_slide_is_refused_at_once(tmp_path: Path) -> None:
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("id,slide\ncase1,nowhere.svs\n")
    result = nextflow(tmp_path, "-profile", "test", "--input", sheet, "--outdir", tmp_path / "results")
    assert result.returncode != 0
    assert f"--input {sheet} row 2: slide nowhere.svs does not exist" in result.output
    assert "Submitted process" not in result.output


# --- outdir reuse across separate runs ---------------------------------------------------------------------------


def test_outdir_reuse_across_separate_runs(tmp_path: Path, cmu_svs: Path, embed_model_dir: Path) -> None:
    """A second run (no -resume, a fresh work dir) starts from the H5 the first one published: the features are
    reused and only the slide embedding is computed; a run with other geometry is refused for that slide and leaves
    the published H5 as it was."""
    outdir = tmp_path / "results"
    common = (
        "-profile", "test", "--input", cmu_svs, "--outdir", outdir, "--feature_plugin", EXAMPLE_PLUGIN,
        "--model_dir", embed_model_dir, "--feature_precision", "float32", "--feature_num_workers", "1",
    )  # fmt: skip
    h5 = outdir / "patches" / f"{cmu_svs.stem}.h5"
    first = nextflow(tmp_path, *common, "--patch_encoders", ENCODER, "-work-dir", tmp_path / "w1",
                     env=offline_env(tmp_path))  # fmt: skip
    assert first.returncode == 0, first.output[-4000:]
    with h5py.File(h5) as handle:
        made = handle[f"features/{ENCODER}"].attrs["creation_date"]
        features = handle[f"features/{ENCODER}"][()]
        assert "slide_features" not in handle
    second = nextflow(tmp_path, *common, "--slide_encoders", f"mean-{ENCODER}", "-work-dir", tmp_path / "w2",
                      env=offline_env(tmp_path))  # fmt: skip
    assert second.returncode == 0, second.output[-4000:]
    with h5py.File(h5) as handle:
        assert handle[f"features/{ENCODER}"].attrs["creation_date"] == made  # reused, not recomputed
        embedding = handle[f"slide_features/mean-{ENCODER}"][()]
        assert np.allclose(embedding, features.astype(np.float64).mean(axis=0), atol=1e-6)
    logs = {r["process"]: (Path(r["workdir"]) / ".command.out").read_text() for r in trace_rows(outdir)}
    assert "tissue already segmented with otsu, reused" in logs["ATLASPATCH:SEGMENT"]
    assert "patches reused" in logs["ATLASPATCH:TILE"]
    assert f"{ENCODER} reused" in logs["ATLASPATCH:EMBED_PATCHES"]
    assert f"mean-{ENCODER} computed" in logs["ATLASPATCH:ENCODE_SLIDE"]
    before = h5.read_bytes()
    third = nextflow(tmp_path, *common, "--patch_size", "256", "-work-dir", tmp_path / "w3", env=offline_env(tmp_path))
    assert third.returncode != 0
    assert "was tiled with other settings (patch_size 224 (file) != 256 (requested)" in third.output
    # this run started from the published H5, so -resume could not match its tasks: a plain re-run is the advice
    assert "run the same command again (without -resume): the slides completed in" in third.output
    assert h5.read_bytes() == before


def test_stub_run_of_the_whole_dag(tmp_path: Path, cmu_svs: Path) -> None:
    """-stub-run with every stage on: PREFLIGHT -> SEGMENT -> TILE -> EMBED_PATCHES -> ENCODE_SLIDE, wired."""
    outdir = tmp_path / "results"
    args = ("-profile", "test", "-stub-run", "--input", cmu_svs, "--outdir", outdir, "-work-dir", tmp_path / "work",
            "--patch_encoders", "uni_v1", "--slide_encoders", "moozy")  # fmt: skip
    result = nextflow(tmp_path, *args)
    assert result.returncode == 0, result.output[-4000:]
    assert sorted(r["process"] for r in trace_rows(outdir, preflight=True)) == [
        "ATLASPATCH:EMBED_PATCHES", "ATLASPATCH:ENCODE_SLIDE", "ATLASPATCH:SEGMENT", "ATLASPATCH:TILE", "PREFLIGHT",
    ]  # fmt: skip
    assert [p.name for p in (outdir / "patches").iterdir()] == [f"{cmu_svs.stem}.h5"]


def test_names_with_spaces_quotes_and_a_leading_dash(
    tmp_path: Path, cmu_svs: Path, cmu_pyramid: Path, embed_model_dir: Path
) -> None:
    """Slides, model dir and plugin whose names hold spaces, a quote, a `#` or start with `-` run as on the CLI
    (Nextflow escapes staged paths; ids are quoted); then a -stub-run into the same outdir is refused, changing
    nothing."""
    folder = tmp_path / "in put"
    folder.mkdir()
    (folder / "O'Brien #1.svs").symlink_to(cmu_svs)
    (folder / "-dash.tiff").symlink_to(cmu_pyramid)
    models = tmp_path / "my models"
    models.symlink_to(embed_model_dir, target_is_directory=True)
    plugin = tmp_path / "plug ins" / f"{ENCODER}.py"
    plugin.parent.mkdir()
    plugin.symlink_to(EXAMPLE_PLUGIN)
    outdir = tmp_path / "res ults"
    result = nextflow(
        tmp_path, "-profile", "test", "--input", folder, "--outdir", outdir, "-work-dir", tmp_path / "work",
        "--patch_encoders", ENCODER, "--feature_plugin", plugin, "--model_dir", models,
        "--feature_precision", "float32", "--feature_num_workers", "0", env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.output[-4000:]
    published = outdir / "patches"
    assert sorted(p.name for p in published.iterdir()) == ["-dash.h5", "O'Brien #1.h5"]
    for h5 in published.iterdir():
        with h5py.File(h5) as handle:
            rows = handle["coords"].shape[0]
            assert rows > 50 and handle[f"features/{ENCODER}"].shape == (rows, 512)
    before = {h5.name: h5.read_bytes() for h5 in published.iterdir()}

    stub = nextflow(tmp_path, "-profile", "test", "-stub-run", "--input", folder, "--outdir", outdir,
                    "-work-dir", tmp_path / "stub-work")  # fmt: skip
    assert stub.returncode != 0
    assert f"-stub-run would overwrite the results in {published} with empty files" in stub.output
    assert {h5.name: h5.read_bytes() for h5 in published.iterdir()} == before


def test_resume_after_a_feature_option_change_reruns_only_the_downstream_stages(embed_run) -> None:
    """-resume with another --feature_batch_size: SEGMENT and TILE stay cached, EMBED_PATCHES runs again."""
    tmp, args, first = embed_run
    assert first.returncode == 0, first.output[-4000:]
    result = nextflow(tmp, *args, "--feature_batch_size", "16", "-resume", env=offline_env(tmp))
    assert result.returncode == 0, result.output[-4000:]
    status = {r["process"]: r["status"] for r in trace_rows(tmp / "results", preflight=True)}
    assert status == {
        "PREFLIGHT": "COMPLETED",  # the parameters changed, so they are checked again
        "ATLASPATCH:SEGMENT": "CACHED",
        "ATLASPATCH:TILE": "CACHED",
        "ATLASPATCH:EMBED_PATCHES": "COMPLETED",
    }
