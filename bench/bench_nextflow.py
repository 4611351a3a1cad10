#!/usr/bin/env python
"""Nextflow vs in-process: the same slides through `nextflow run . -profile test` (PREFLIGHT, then SEGMENT -> TILE ->
EMBED_PATCHES -> ENCODE_SLIDE per slide, local executor) and through one `atlaspatch encode-slide` process.

    .venv/bin/python bench/bench_nextflow.py                      # 8 × 16384² mosaics at 20×, 3 reps per mode
    .venv/bin/python bench/bench_nextflow.py --slides 2 --reps 1  # a quick check

Slides: bench/make_slide.py mosaics (--size px square, mpp 0.5 = 20×, seeds 0..N-1, tissue fill 0.35-0.7), built
into bench/out/nextflow/slides/ if missing. Both modes get the same options: otsu on CPU, 224 px at 20×,
`--slide-encoders mean-bench_tiny` with the `bench_tiny` patch encoder that bench/bench_embed_patches.py registers
as a --feature-plugin (4×4 average pool + linear, no weights: the run is bound by reading and plumbing, not by a
model), float32, 2 DataLoader workers, 2 patch-read threads. Nextflow runs under -profile test (resourceLimits:
2 CPUs, 6 GB: the machine's size), with a fresh work dir and outdir per rep.

Measured, the modes interleaved, each timed run under `flock /tmp/atlaspatch-bench.lock` (shared with the other
benchmarks, so they never overlap): wall of each run (GNU time, inside the lock); the Nextflow trace per stage
(realtime, %cpu, peak_rss); Nextflow's fixed costs: `nextflow -version` (JVM start) and `-resume` of a finished run
(every task CACHED: the launcher, config, DAG, cache look-ups and reports, no work). Then the outputs of the two
modes are compared slide by slide (coords, features, slide embedding).

Writes bench/out/nextflow.md and .json, and the plot docs/img/nextflow_vs_inprocess.png (needs matplotlib).

A realistic CPU encoder instead of bench_tiny: `--encoder my_resnet18` (examples/feature_plugins/my_resnet18.py,
timm ResNet-18, 512-d, with `--slide-encoders mean-my_resnet18`; its random-init weights are the ones
bench/bench_embed_patches.py writes under bench/out/embed/random-weights/my_resnet18/resnet18.pth, written here too
if missing, and that folder is passed as --model-dir / --model_dir in both modes). Its runs go to
bench/out/nextflow/runs-my_resnet18/ and its results to bench/out/nextflow-my_resnet18.md/.json and the plot
docs/img/nextflow_vs_inprocess_my_resnet18.png, so the bench_tiny results stay. `--modes` picks the modes; mode
`nextflow-c1` is `nextflow` with NXF_OPTS=-XX:TieredStopAtLevel=1 (C1 only, the flag the official launcher uses
for commands other than `run`), and with it the JVM start and the all-cached -resume are timed under that flag too
(how much of Nextflow's fixed cost is JIT). E.g. (about 5 min a run on 2 cores):

    .venv/bin/python bench/bench_nextflow.py --encoder my_resnet18 --modes in-process,nextflow,nextflow-c1 --reps 1
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
ROOT = OUT / "nextflow"
NEXTFLOW = REPO / "tools" / "nextflow" / "nextflow"
LOCK = "/tmp/atlaspatch-bench.lock"
TARGET_RATIO = 1.3
PAIRS = ROOT / "two-tasks-at-once.config"  # -c: the local executor may use 4 CPUs, so two 2-CPU tasks run at once
MODES = ("in-process", "nextflow", "nextflow-2x", "nextflow-c1")
DEFAULT_MODES = ("in-process", "nextflow", "nextflow-2x")
C1_OPTS = "-XX:TieredStopAtLevel=1"  # NXF_OPTS of mode nextflow-c1: the JVM's C1 compiler only, no C2
STAGES = ("PREFLIGHT", "ATLASPATCH:SEGMENT", "ATLASPATCH:TILE", "ATLASPATCH:EMBED_PATCHES", "ATLASPATCH:ENCODE_SLIDE")
RANDOM_WEIGHTS = OUT / "embed" / "random-weights"  # bench/bench_embed_patches.py's --model-dir


@dataclass(frozen=True)
class Setup:
    """The patch encoder, its plugin (copied: Nextflow caches on the file's mtime, and sources get edited), where the
    results go."""

    encoder: str
    plugin_source: Path
    model_dir: Path | None = None

    @property
    def suffix(self) -> str:
        return "" if self.encoder == "bench_tiny" else f"-{self.encoder}"

    @property
    def slide_encoder(self) -> str:
        return f"mean-{self.encoder}"

    @property
    def plugin(self) -> Path:
        return ROOT / f"{self.encoder}_plugin.py"

    @property
    def runs(self) -> Path:
        return ROOT / f"runs{self.suffix}"

    @property
    def report(self) -> Path:
        return OUT / f"nextflow{self.suffix}"

    @property
    def plot(self) -> Path:
        return REPO / "docs" / "img" / f"nextflow_vs_inprocess{self.suffix.replace('-', '_')}.png"

    def cli_args(self) -> tuple[str, ...]:
        return (
            "--slide-encoders", self.slide_encoder, "--feature-plugin", str(self.plugin), "--patch-size", "224",
            "--target-mag", "20", "--segmenter", "otsu", "--device", "cpu", "--feature-device", "cpu",
            "--feature-precision", "float32", "--feature-batch-size", "32", "--feature-num-workers", "2",
            "--patch-workers", "2", *(("--model-dir", str(self.model_dir)) if self.model_dir else ()),
        )  # fmt: skip

    def nf_args(self) -> tuple[str, ...]:
        return (
            "-profile", "test", "--slide_encoders", self.slide_encoder, "--feature_plugin", str(self.plugin),
            "--segmenter", "otsu", "--device", "cpu", "--feature_device", "cpu", "--feature_precision", "float32",
            "--feature_batch_size", "32", "--feature_num_workers", "2", "--patch_workers", "2",
            *(("--model_dir", str(self.model_dir)) if self.model_dir else ()),
        )  # fmt: skip


SETUPS = {
    "bench_tiny": Setup("bench_tiny", BENCH / "bench_embed_patches.py"),  # 4×4 average pool + linear, no weights
    "my_resnet18": Setup("my_resnet18", REPO / "examples" / "feature_plugins" / "my_resnet18.py", RANDOM_WEIGHTS),
}


def env(nxf_opts: str | None = None) -> dict[str, str]:
    """Tasks find this venv's `atlaspatch` first on PATH; no network. NXF_OPTS only where given."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NXF_HOME": str(ROOT / ".nxf-home"),
        "NXF_ANSI_LOG": "false",
        "HF_HUB_OFFLINE": "1",
        **({"NXF_OPTS": nxf_opts} if nxf_opts else {}),
    }


def copy_plugin(setup: Setup) -> None:
    """The plugin copied once (bench_tiny: bench/bench_embed_patches.py), so its edits never bust the cache."""
    if not setup.plugin.exists() or setup.plugin.read_bytes() != setup.plugin_source.read_bytes():
        ROOT.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(setup.plugin_source, setup.plugin)


def ensure_weights(setup: Setup) -> None:
    """Random-init weights where --model-dir looks, by bench/bench_embed_patches.py's recipe (kept if there)."""
    if setup.model_dir is None:
        return
    from atlaspatch.encoders.patch import patch_encoder_registry

    spec = patch_encoder_registry([setup.plugin]).get(setup.encoder)
    if spec.weights is None or (setup.model_dir / spec.weights.name / spec.weights.filename).exists():
        return
    loader = importlib.util.spec_from_file_location("bench_embed_patches", BENCH / "bench_embed_patches.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    module.random_weights(spec, setup.model_dir)


def make_slides(count: int, size: int) -> Path:
    """The mosaics (built once into slides-<size>/) and a folder of links to the first `count` of them."""
    built, inputs = ROOT / f"slides-{size}", ROOT / f"inputs-{size}-{count}"
    built.mkdir(parents=True, exist_ok=True)
    inputs.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        fill = 0.35 + 0.05 * ((seed * 3) % 8)  # 0.35 .. 0.70, a different order than the seeds
        out = built / f"mosaic-{size}-s{seed}.tiff"
        if not out.exists():
            cmd = [sys.executable, str(BENCH / "make_slide.py"), str(out), "--size", str(size), "--mpp", "0.5",
                   "--seed", str(seed), "--fill", f"{fill:.2f}"]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        if not (inputs / out.name).exists():
            (inputs / out.name).symlink_to(out)
    return inputs


def timed(cmd: list[str], cwd: Path, log: Path, nxf_opts: str | None = None) -> tuple[float, int]:
    """Wall seconds of `cmd` measured inside the benchmark lock (waiting for the lock is not counted)."""
    cwd.mkdir(parents=True, exist_ok=True)
    seconds = cwd / "wall.txt"
    with log.open("w") as handle:
        rc = subprocess.run(
            ["flock", LOCK, "/usr/bin/time", "-f", "%e", "-o", str(seconds), *cmd],
            cwd=cwd, env=env(nxf_opts), stdout=handle, stderr=subprocess.STDOUT,
        ).returncode  # fmt: skip
    return float(seconds.read_text().split()[-1]), rc


def run_inprocess(setup: Setup, slides: Path, tag: str) -> dict[str, Any]:
    where = setup.runs / tag
    shutil.rmtree(where, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "atlaspatch"), "encode-slide", str(slides), "-o", str(where / "out"),
           *setup.cli_args()]  # fmt: skip
    wall, rc = timed(cmd, where, where / "run.log")
    return {"mode": "in-process", "tag": tag, "wall_s": wall, "rc": rc, "out": str(where / "out")}


def run_nextflow_2x(setup: Setup, slides: Path, tag: str) -> dict[str, Any]:
    return {**run_nextflow(setup, slides, tag, extra=("-c", str(PAIRS))), "mode": "nextflow-2x"}


def run_nextflow_c1(setup: Setup, slides: Path, tag: str) -> dict[str, Any]:
    return {**run_nextflow(setup, slides, tag, nxf_opts=C1_OPTS), "mode": "nextflow-c1"}


def run_nextflow(
    setup: Setup,
    slides: Path,
    tag: str,
    resume_of: Path | None = None,
    extra: tuple[str, ...] = (),
    nxf_opts: str | None = None,
) -> dict[str, Any]:
    where = resume_of or setup.runs / tag
    if resume_of is None:
        shutil.rmtree(where, ignore_errors=True)
    cmd = [str(NEXTFLOW), "run", str(REPO), *setup.nf_args(), "--input", str(slides), "--outdir", str(where / "out"),
           "-work-dir", str(where / "work"), *extra, *(["-resume"] if resume_of else [])]  # fmt: skip
    time.sleep(1.1)  # the trace file is named by the start second: never reuse the previous run's
    log = where / (f"resume{'-c1' if nxf_opts else ''}.log" if resume_of else "run.log")
    wall, rc = timed(cmd, where, log, nxf_opts)
    rows = trace(where / "out")
    return {"mode": "nextflow-resume" if resume_of else "nextflow", "tag": tag, "wall_s": wall, "rc": rc,
            "out": str(where / "out"), "where": str(where), "tasks": rows}  # fmt: skip


RUNS = {"in-process": run_inprocess, "nextflow": run_nextflow, "nextflow-2x": run_nextflow_2x,
        "nextflow-c1": run_nextflow_c1}  # fmt: skip


def trace(outdir: Path) -> list[dict[str, str]]:
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    with traces[-1].open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def seconds(text: str) -> float:
    """Nextflow's durations: '1m 2s', '3.4s', '850ms', '-'."""
    total = 0.0
    for part in text.split():
        for unit, factor in (("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if part.endswith(unit):
                total += float(part[: -len(unit)]) * factor
                break
    return total


def percent(text: str) -> float:
    return float(text.rstrip("%")) if text.rstrip("%").replace(".", "", 1).isdigit() else 0.0


def megabytes(text: str) -> float:
    units = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    number, _, unit = text.partition(" ")
    return float(number) * units.get(unit, 0.0) if unit else 0.0


def stage_table(tasks: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in STAGES:
        rows = [r for r in tasks if r["process"] == stage and r["status"] == "COMPLETED"]
        if rows:
            realtimes = [seconds(r["realtime"]) for r in rows]
            out[stage] = {
                "tasks": len(rows),
                "realtime_sum_s": sum(realtimes),
                "realtime_median_s": statistics.median(realtimes),
                "cpu_pct_mean": statistics.mean(percent(r["%cpu"]) for r in rows),
                "peak_rss_max_mb": max(megabytes(r["peak_rss"]) for r in rows),
            }
    return out


def compare(setup: Setup, inprocess: Path, nextflow: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    ours = sorted((nextflow / "patches").glob("*.h5"))
    theirs = sorted((inprocess / "patches").glob("*.h5"))
    result: dict[str, Any] = {"slides": len(ours), "same_names": [p.name for p in ours] == [p.name for p in theirs]}
    diffs, patches, equal = [], 0, True
    for a_path, b_path in zip(ours, theirs, strict=False):
        with h5py.File(a_path) as a, h5py.File(b_path) as b:
            equal &= bool(np.array_equal(a["coords"][()], b["coords"][()]))
            patches += a["coords"].shape[0]
            for name in (f"features/{setup.encoder}", f"slide_features/{setup.slide_encoder}"):
                equal &= a[name].shape == b[name].shape
                diffs.append(
                    float(np.max(np.abs(a[name][()] - b[name][()]))) if a[name].shape == b[name].shape else 1e9
                )
    result.update(coords_and_shapes_equal=equal, max_abs_diff=max(diffs, default=0.0), patches=patches)
    return result


def jvm_start(setup: Setup, reps: int, nxf_opts: str | None = None) -> list[float]:
    where = setup.runs / "jvm"
    return [timed([str(NEXTFLOW), "-version"], where, where / "version.log", nxf_opts)[0] for _ in range(reps)]


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.1, 1.5]})
    labels = {
        "in-process": ("atlaspatch\nencode-slide\n(one process)", "#4C72B0"),
        "nextflow": ("nextflow run\n(-profile test,\n1 task at a time)", "#DD8452"),
        "nextflow-2x": ("nextflow run\n(2 tasks\nat once)", "#C44E52"),
        "nextflow-c1": ("nextflow run\n(NXF_OPTS=\n" + C1_OPTS.removeprefix("-XX:") + ")", "#8172B2"),
    }
    modes = [(mode, labels[mode][0]) for mode in MODES if report["walls"].get(mode)]
    base = statistics.median(report["walls"]["in-process"])
    for i, (mode, _label) in enumerate(modes):
        walls = report["walls"][mode]
        median = statistics.median(walls)
        left.bar(i, median, color=labels[mode][1], width=0.6)
        left.scatter([i] * len(walls), walls, color="black", s=14, zorder=3)
        left.text(i, median, f"{median:.0f} s\n{median / base:.2f}×", ha="center", va="bottom", fontsize=9)
    left.axhline(TARGET_RATIO * base, color="grey", ls="--", lw=1, label=f"target: {TARGET_RATIO}× in-process")
    left.legend(loc="upper left", fontsize=8, frameon=False)
    left.set_xticks(range(len(modes)), [label for _, label in modes], fontsize=8)
    left.margins(y=0.15)
    left.set_ylabel("wall time, s (median; dots: reps)")
    left.set_title(f"{report['slides']} slides, {report['size']}² px at 20×, {report['patches']} patches, "
                   f"{report.get('encoder', 'bench_tiny')}", fontsize=10)  # fmt: skip

    stages = report["stages"]
    names = [s.split(":")[-1] for s in stages]
    sums = [v["realtime_sum_s"] for v in stages.values()]
    right.barh(names, sums, color="#DD8452")
    for y, (value, info) in enumerate(zip(sums, stages.values(), strict=True)):
        right.text(value, y, f" {value:.0f} s, {info['tasks']} tasks, {info['cpu_pct_mean']:.0f}% cpu, "
                   f"{info['peak_rss_max_mb']:.0f} MB", va="center", fontsize=8)  # fmt: skip
    right.axvline(base, color="#4C72B0", ls="--", lw=1, label=f"in-process wall, all stages ({base:.0f} s)")
    right.legend(loc="lower right", fontsize=8, frameon=False)
    right.invert_yaxis()
    right.set_xlim(0, max(*sums, base) * 1.9)
    right.set_xlabel("task realtime summed over the slides, s (the median `nextflow` run's trace)")
    right.set_title(f"Nextflow per stage; fixed cost: JVM {report['jvm_start_s']:.1f} s, "
                    f"all-cached -resume {report['cached_resume_s']:.1f} s", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(report: dict[str, Any]) -> str:
    slide_encoder = f"mean-{report.get('encoder', 'bench_tiny')}"
    med = {mode: statistics.median(walls) for mode, walls in report["walls"].items() if walls}
    lines = [
        f"## Nextflow vs in-process: {report['slides']} slides of {report['size']}² px at 20× ({report['patches']} "
        f"patches), `--slide-encoders {slide_encoder}`",
        "",
        f"Machine: {report['machine']}. {report['reps']} reps per mode, interleaved, each under `flock {LOCK}`.",
        "",
        "| mode | wall, median (s) | reps (s) | ratio to in-process |",
        "|---|---:|---|---:|",
    ]
    for mode in (m for m in MODES if m in med):
        reps = ", ".join(f"{w:.1f}" for w in report["walls"][mode])
        lines.append(f"| {mode} | {med[mode]:.1f} | {reps} | {med[mode] / med['in-process']:.2f} |")
    lines += [
        f"| Nextflow fixed: JVM start (`nextflow -version`) | {statistics.median(report['jvm_walls']):.1f} | "
        f"{', '.join(f'{w:.1f}' for w in report['jvm_walls'])} | |",
        f"| Nextflow fixed: `-resume`, every task cached | {report['cached_resume_s']:.1f} | | |",
    ]
    if report.get("jvm_walls_c1"):
        lines += [
            f"| Nextflow fixed, `NXF_OPTS={C1_OPTS}`: JVM start | {statistics.median(report['jvm_walls_c1']):.1f} | "
            f"{', '.join(f'{w:.1f}' for w in report['jvm_walls_c1'])} | |",
            f"| Nextflow fixed, `NXF_OPTS={C1_OPTS}`: `-resume`, every task cached | "
            f"{report['cached_resume_c1_s']:.1f} | | |",
        ]
    lines += [
        "",
        f"Target: Nextflow ≤ {TARGET_RATIO}× in-process → **{'met' if report['ratio'] <= TARGET_RATIO else 'not met'}**"
        f" ({report['ratio']:.2f}×).",
        "",
        "Nextflow per stage (the median run's trace; realtime summed over the slide tasks):",
        "",
        "| stage | tasks | realtime sum (s) | median per task (s) | mean %cpu | max peak_rss (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, v in report["stages"].items():
        lines.append(f"| {stage} | {v['tasks']} | {v['realtime_sum_s']:.1f} | {v['realtime_median_s']:.1f} | "
                     f"{v['cpu_pct_mean']:.0f} | {v['peak_rss_max_mb']:.0f} |")  # fmt: skip
    total = sum(v["realtime_sum_s"] for v in report["stages"].values())
    eq = report["equal"]
    other = report.get("equal_other", {"nextflow-2x": report.get("equal_2x")})
    others = "; ".join(
        f"{mode}: {e['coords_and_shapes_equal']}, {e['max_abs_diff']:.3g}" for mode, e in other.items() if e
    )
    lines += [
        f"| all tasks | {sum(v['tasks'] for v in report['stages'].values())} | {total:.1f} | | | |",
        "",
        f"Outputs: {eq['slides']} H5s per mode; coords and dataset shapes equal: {eq['coords_and_shapes_equal']}; "
        f"max |Δ| over features/{report.get('encoder', 'bench_tiny')} and slide_features/{slide_encoder}: "
        f"{eq['max_abs_diff']:.3g}" + (f" ({others})." if others else "."),
        "",
        "Modes: `in-process` = one `atlaspatch encode-slide` over the folder; `nextflow` = `nextflow run . -profile "
        "test` (2-CPU tasks on the 2-CPU local executor: one task at a time); `nextflow-2x` = the same with "
        f"`executor.cpus = 4` (two tasks at once); `nextflow-c1` = `nextflow` with `NXF_OPTS={C1_OPTS}`.",
    ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    gib = int(mem.split()[1]) / 2**20
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{os.cpu_count()}-core {cpu}, {gib:.1f} GiB, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=16384, help="mosaic width = height, px at 20×")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-min", type=float, default=20.0, help="start no rep after this (2 reps at least)")
    parser.add_argument("--encoder", choices=sorted(SETUPS), default="bench_tiny",
                        help="patch encoder, slide encoder mean-<it>; not bench_tiny: to nextflow-<it>.*")  # fmt: skip
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated, of {', '.join(MODES)}; in-process and nextflow always")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from the --encoder's JSON")
    args = parser.parse_args()
    setup = SETUPS[args.encoder]
    modes = [m for m in MODES if m in {"in-process", "nextflow", *args.modes.split(",")}]
    if unknown := set(args.modes.split(",")) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")
    if args.replot:
        plot(json.loads(setup.report.with_suffix(".json").read_text()), setup.plot)
        return
    start = time.monotonic()

    copy_plugin(setup)
    ensure_weights(setup)
    slides = make_slides(args.slides, args.size)
    PAIRS.write_text("executor.cpus = 4\n")
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        if rep >= 2 and time.monotonic() - start > 60 * args.budget_min:
            print(f"budget of {args.budget_min} min spent: {rep} reps", flush=True)
            break
        order = [RUNS[m] for m in modes]
        shift = rep % len(order)
        for run in order[shift:] + order[:shift]:
            result = run(setup, slides, f"{run.__name__.removeprefix('run_')}-{rep}")
            print(f"rep {rep} {result['mode']}: {result['wall_s']:.1f} s (rc {result['rc']})", flush=True)
            assert result["rc"] == 0, f"{result['mode']} failed: see {result['out']}/../run.log"
            runs.append(result)

    walls = {m: [r["wall_s"] for r in runs if r["mode"] == m] for m in modes}
    nf_runs = sorted((r for r in runs if r["mode"] == "nextflow"), key=lambda r: r["wall_s"])
    median_nf = nf_runs[len(nf_runs) // 2]
    resume = run_nextflow(setup, slides, "resume", resume_of=Path(median_nf["where"]))
    assert resume["rc"] == 0 and {t["status"] for t in resume["tasks"]} == {"CACHED"}, resume
    jvm = jvm_start(setup, 3)
    c1: dict[str, Any] = {}
    if "nextflow-c1" in modes:
        resume_c1 = run_nextflow(setup, slides, "resume", resume_of=Path(median_nf["where"]), nxf_opts=C1_OPTS)
        assert resume_c1["rc"] == 0 and {t["status"] for t in resume_c1["tasks"]} == {"CACHED"}, resume_c1
        c1_runs = sorted((r for r in runs if r["mode"] == "nextflow-c1"), key=lambda r: r["wall_s"])
        c1 = {"jvm_walls_c1": jvm_start(setup, 3, C1_OPTS), "cached_resume_c1_s": resume_c1["wall_s"],
              "stages_c1": stage_table(c1_runs[len(c1_runs) // 2]["tasks"])}  # fmt: skip
    last_in = next(r for r in reversed(runs) if r["mode"] == "in-process")
    equal = compare(setup, Path(last_in["out"]), Path(median_nf["out"]))
    equal_other = {
        mode: compare(setup, Path(last_in["out"]), Path(next(r for r in reversed(runs) if r["mode"] == mode)["out"]))
        for mode in modes if mode not in ("in-process", "nextflow")
    }  # fmt: skip

    ratio = statistics.median(walls["nextflow"]) / statistics.median(walls["in-process"])
    report = {
        "machine": machine(), "encoder": setup.encoder, "slides": args.slides, "size": args.size,
        "reps": len(walls["nextflow"]), "patches": equal["patches"], "walls": walls, "ratio": ratio,
        "target_ratio": TARGET_RATIO, "jvm_walls": jvm, "jvm_start_s": statistics.median(jvm),
        "cached_resume_s": resume["wall_s"], **c1, "stages": stage_table(median_nf["tasks"]), "equal": equal,
        **({"equal_2x": equal_other["nextflow-2x"]} if "nextflow-2x" in equal_other else {}),
        "equal_other": equal_other,
        "commands": {
            "in-process": f"atlaspatch encode-slide SLIDES -o OUT {' '.join(setup.cli_args())}",
            "nextflow": f"tools/nextflow/nextflow run . {' '.join(setup.nf_args())} --input SLIDES --outdir OUT "
                        "-work-dir WORK",
            "nextflow-2x": f"the same plus -c {PAIRS.relative_to(REPO)} (executor.cpus = 4)",
            "nextflow-c1": f"the same as nextflow with NXF_OPTS={C1_OPTS}",
        },
        "runs": [{k: v for k, v in r.items() if k != "tasks"} for r in runs],
        "median_nextflow_trace": median_nf["tasks"],
    }  # fmt: skip
    setup.report.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    setup.report.with_suffix(".md").write_text(text)
    print(text)
    if not args.no_plot:
        plot(report, setup.plot)
        print(f"plot: {setup.plot.relative_to(REPO)}")


if __name__ == "__main__":
    main()
