#!/usr/bin/env python
"""Peak memory vs patch count of the whole `atlaspatch encode-slide` process tree; the embed plots.

    .venv/bin/python bench/bench_memory.py                # ≈ 4 min on 2 cores → bench/out/memory_encode_slide.md/.json
    .venv/bin/python bench/bench_memory.py --plot-only    # re-draw docs/img/*.png from the JSON reports

`atlaspatch encode-slide SLIDE -o OUT --slide-encoders mean-bench_tiny --patch-size 224 --target-mag 20
--segmenter otsu --device cpu --feature-device cpu --feature-precision float32 --feature-plugin
bench/bench_embed_patches.py --feature-batch-size 32 --feature-num-workers 2 [--step-size S] --force`, one fresh
process per run: segment + tile + embed-patches + the slide encoder `mean-bench_tiny` (mean of the patch features),
all in the one CLI process (plus its fork server and DataLoader workers). `bench_tiny` (4×4 average pool +
linear, no weights file) is registered by bench_embed_patches.py, so the run is bound by reading the slide, the
part whose memory could grow with the patch count. Slides: make_slide.py mosaics (seed 0, 20×) of growing side, so
the tissue area grows (built if missing), and the largest one again with a smaller --step-size (overlapping
patches) to pass 20k patches. The process tree is polled from /proc every 0.1 s (bench_embed_patches.TreeMemory):
peak sums of RSS and PSS, per role, each process's VmHWM. Every run holds the benchmark lock
(/tmp/atlaspatch-bench.lock).

Plots (matplotlib; `.venv/bin/pip install matplotlib`): docs/img/embed_throughput.png from
bench/out/embed_patches.json (patches/s per model: bare forward, embed_patches, LazySlide) and
docs/img/rss_vs_patches.png from this report + the embed-patches memory sweep in bench/out/embed_patches.json;
docs/img/embed_throughput_bfloat16.png from a `bench_embed_patches.py --precision bfloat16 --out bench/out/embed-bf16`
run, when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_embed_patches as bep  # noqa: E402

REPO, OUT = bep.REPO, bep.OUT
# (side in px, --step-size or None); ≈ 300 → 24k patches on the seed-0 mosaics
DEFAULT_RUNS = "8192:224,16384:224,32768:224,65536:224,65536:192"


def slide_for(side: int) -> Path:
    path = OUT / f"mosaic-{side}-mpp0.5.tiff"
    if not path.exists():
        import make_slide

        with bep.bench_lock():
            make_slide.main([str(path), "--size", str(side), "--mpp", "0.5", "--seed", "0"])
    return path


def encode_slide_run(slide: Path, step: int | None, out_dir: Path, workers: int, batch: int) -> dict:
    import h5py

    cmd = [
        sys.executable,
        "-m",
        "atlaspatch",
        "encode-slide",
        str(slide),
        "-o",
        str(out_dir),
        "--slide-encoders",
        f"mean-{bep.TINY}",
        "--patch-size",
        str(bep.PATCH_SIZE),
        "--target-mag",
        str(bep.TARGET_MAG),
        "--segmenter",
        "otsu",
        "--device",
        "cpu",
        "--feature-device",
        "cpu",
        "--feature-precision",
        "float32",
        "--feature-plugin",
        str(BENCH / "bench_embed_patches.py"),
        "--feature-batch-size",
        str(batch),
        "--feature-num-workers",
        str(workers),
        *(["--step-size", str(step)] if step else []),
        "--force",
    ]
    with bep.bench_lock():
        result = bep.cli_memory(cmd)
    h5 = out_dir / "patches" / f"{slide.stem}.h5"
    with h5py.File(h5, "r") as handle:
        patches = int(handle.attrs["num_patches"])
        dims = {name: handle["features"][name].shape for name in handle["features"]}
        slide_features = list(handle["slide_features"]) if "slide_features" in handle else []
    h5.unlink()
    result.update(
        slide=slide.name,
        step_size=step or bep.PATCH_SIZE,
        patches=patches,
        patches_per_s=patches / result["wall_s"],
        features=str(dims),
        slide_features=slide_features,
        workers=workers,
    )
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Peak memory vs patch count: `atlaspatch encode-slide` (whole process tree)",
        "",
        f"Command: `{report['command']}`; one fresh process per row, median of {report['reps']} run(s) for the wall "
        "time, the largest peak over them for memory. Tree = the CLI process + its fork server + DataLoader workers "
        "(+ resource tracker), polled every 0.1 s: RSS sums count shared pages once per process, PSS splits them.",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, {report['machine']['memory_gib']} "
        f"GiB; Python {report['machine']['python']}; torch {report['machine']['torch']}; load average at start "
        f"{report['machine']['loadavg_start']}, at end {report['loadavg_end']}.",
        "",
        "| slide | step px | patches | wall s | patches/s | tree peak RSS MB | tree peak PSS MB | … CLI "
        "| … fork server | … workers | CLI VmHWM MB | largest worker VmHWM MB | processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        role = row["peak_pss_mb_by_role"]
        lines.append(
            f"| {row['slide']} | {row['step_size']} | {row['patches']} | {row['wall_s']:.1f} | "
            f"{row['patches_per_s']:.0f} | **{row['tree_peak_rss_mb']:.0f}** | **{row['tree_peak_pss_mb']:.0f}** | "
            f"{role.get('cli', 0):.0f} | {role.get('forkserver', 0):.0f} | {role.get('worker', 0):.0f} | "
            f"{row['cli_hwm_mb']:.0f} | {row['worker_hwm_mb']:.0f} | {row['max_processes']} |"
        )
    rows = report["rows"]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        lines += [
            "",
            f"- {first['patches']} → {last['patches']} patches ({last['patches'] / first['patches']:.0f}×): tree peak "
            f"RSS {last['tree_peak_rss_mb'] - first['tree_peak_rss_mb']:+.0f} MB, PSS "
            f"{last['tree_peak_pss_mb'] - first['tree_peak_pss_mb']:+.0f} MB, CLI process VmHWM "
            f"{last['cli_hwm_mb'] - first['cli_hwm_mb']:+.0f} MB, largest worker VmHWM "
            f"{last['worker_hwm_mb'] - first['worker_hwm_mb']:+.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- plots


def plot_throughput(embed_json: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(embed_json.read_text())
    models = [m for m in data["models"] if any(k.startswith("lazyslide_") for k in m["summary"])] or data["models"]

    def best(model: dict, prefix: str) -> tuple[str, dict] | None:
        keys = [k for k in model["summary"] if k.startswith(prefix)]
        if not keys:
            return None
        key = max(keys, key=lambda k: model["summary"][k]["patches_per_s"])
        return key, model["summary"][key]

    labels = ["bare forward\n(ceiling)", "AtlasPatch\nembed_patches", "LazySlide\nfeature_extraction"]
    colors = ["#9e9e9e", "#1f77b4", "#ff7f0e"]
    fig, axes = plt.subplots(1, len(models), figsize=(max(8.6, 4.3 * len(models)), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        picks = [("bare", model["summary"]["bare"]), best(model, "stage_"), best(model, "lazyslide_")]
        values, lows, highs, names = [], [], [], []
        for pick in picks:
            if pick is None:
                values.append(0), lows.append(0), highs.append(0), names.append("")
                continue
            key, entry = pick
            rates = [r["patches_per_s"] for r in model["runs"][key]]
            values.append(entry["patches_per_s"])
            lows.append(entry["patches_per_s"] - min(rates))
            highs.append(max(rates) - entry["patches_per_s"])
            names.append("" if key == "bare" else f"{key.rsplit('_w', 1)[1]} worker(s)")
        ax.bar(range(3), values, color=colors, yerr=[lows, highs], capsize=4, ecolor="#333333")
        for i, value in enumerate(values):
            ax.text(i, value / 2, f"{value:.2f}\n{names[i]}", ha="center", va="center", fontsize=8, color="white")
        ax.set_xticks(range(3), labels, fontsize=8)
        vs = model["summary"].get("vs_lazyslide")
        title = f"{model['model']} ({model['family']}), N={model['patches']}"
        if vs:
            title += f"\nAtlasPatch ÷ LazySlide = {vs:.2f}×"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("patches / s (higher is better)")
        ax.grid(axis="y", alpha=0.3)
    m = data["machine"]
    fig.suptitle(
        f"Patch embedding on CPU: {m['cores']}-core VM, torch {m['torch']}, {data.get('precision', 'float32')}, "
        f"batch {data['batch_size']}, "
        f"random-init weights\nmedian of {data['reps']} interleaved reps; bars = min–max; best worker count per tool",
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_memory(report_json: Path, embed_json: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if report_json.exists():
        rows = json.loads(report_json.read_text())["rows"]
        x = [r["patches"] for r in rows]
        ax.plot(x, [r["tree_peak_rss_mb"] for r in rows], "o-", color="#1f77b4", label="encode-slide: tree peak RSS")
        ax.plot(x, [r["tree_peak_pss_mb"] for r in rows], "o--", color="#1f77b4", label="encode-slide: tree peak PSS")
    if embed_json.exists():
        mem = json.loads(embed_json.read_text()).get("memory") or {}
        rows = [r for r in mem.get("rows", []) if r["variant"] == "baseline"]
        if rows:
            x = [r["patches"] for r in rows]
            ax.plot(
                x, [r["tree_peak_rss_mb"] for r in rows], "s-", color="#2ca02c", label="embed-patches: tree peak RSS"
            )
            ax.plot(
                x, [r["tree_peak_pss_mb"] for r in rows], "s--", color="#2ca02c", label="embed-patches: tree peak PSS"
            )
    ax.set_xscale("log")
    ax.set_xlabel("patches (log scale)")
    ax.set_ylabel("peak memory of the process tree, MB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(
        "Peak memory of the process tree vs patch count\n(CLI + fork server + 2 DataLoader workers; encoder "
        "bench_tiny, read-bound)",
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated SIDE:STEP (mosaic side, --step-size)")
    parser.add_argument("--workers", type=int, default=2, help="--feature-num-workers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--embed-json", type=Path, default=OUT / "embed_patches.json")
    parser.add_argument(
        "--embed-json-reduced",
        type=Path,
        default=OUT / "embed-bf16" / "embed_patches.json",
        help="a bench_embed_patches.py --precision bfloat16 run: docs/img/embed_throughput_<precision>.png",
    )
    parser.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    report_json = args.out / "memory_encode_slide.json"
    if not args.plot_only:
        started = time.perf_counter()
        report: dict = {"machine": bep.machine_info("cpu"), "reps": args.reps, "rows": []}
        work = args.out / "memory" / "encode-slide"
        work.mkdir(parents=True, exist_ok=True)
        runs = []
        for item in args.runs.split(","):
            side, _, step = item.partition(":")
            runs.append((int(side), int(step) if step and int(step) != bep.PATCH_SIZE else None))
        results: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
        for rep in range(args.reps):  # interleaved: every slide once per rep
            for i, (side, step) in enumerate(runs):
                slide = slide_for(side)
                print(f"[encode-slide] rep {rep + 1}: {slide.name} step {step or bep.PATCH_SIZE} …", file=sys.stderr)
                results[i].append(encode_slide_run(slide, step, work, args.workers, args.batch_size))
        for i in results:
            values = results[i]
            row = dict(max(values, key=lambda r: r["tree_peak_rss_mb"]))
            row["wall_s"] = sorted(r["wall_s"] for r in values)[len(values) // 2]
            row["patches_per_s"] = row["patches"] / row["wall_s"]
            row["all_wall_s"] = [r["wall_s"] for r in values]
            report["rows"].append(row)
        report["rows"].sort(key=lambda r: r["patches"])
        report["command"] = (
            f"atlaspatch encode-slide SLIDE -o OUT --slide-encoders mean-{bep.TINY} --patch-size 224 --target-mag 20 "
            "--segmenter otsu --device cpu --feature-device cpu --feature-precision float32 --feature-plugin "
            f"bench/bench_embed_patches.py --feature-batch-size {args.batch_size} --feature-num-workers "
            f"{args.workers} [--step-size S] --force"
        )
        report["loadavg_end"] = bep.loadavg()
        report["bench_seconds"] = time.perf_counter() - started
        text = markdown(report)
        report_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        (args.out / "memory_encode_slide.md").write_text(text)
        print(text)
        print(f"(took {report['bench_seconds']:.0f} s)", file=sys.stderr)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no plots (.venv/bin/pip install matplotlib)", file=sys.stderr)
            return 0
        if args.embed_json.exists():
            plot_throughput(args.embed_json, args.img / "embed_throughput.png")
        if args.embed_json_reduced.exists():
            precision = json.loads(args.embed_json_reduced.read_text()).get("precision", "bfloat16")
            plot_throughput(args.embed_json_reduced, args.img / f"embed_throughput_{precision}.png")
        plot_memory(report_json, args.embed_json, args.img / "rss_vs_patches.png")
        print(f"wrote {args.img / 'embed_throughput.png'} and {args.img / 'rss_vs_patches.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
