"""Fault injection on `atlaspatch encode-slide`: SIGKILL inside each stage, stale and live locks, two concurrent runs
on one output directory, and malformed inputs next to good slides.

Every run is the real console command on the real CMU slides (Aperio SVS and pyramidal TIFF), with `tiny_conv`
(tests/plugins/tiny_conv.py: a seeded 16-d conv, no weights file) and its `mean-tiny_conv` slide encoder, so a run
costs a few seconds. Kills land inside a chosen stage: the run is slowed only there (tests/faults.py), the test
waits for that stage's lock file (its payload names the phase), sleeps a seeded random part of the slowed window,
and the lock the dead process leaves behind proves which stage it died in.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlaspatch.h5 import schema
from atlaspatch.h5.inspect import inspect_h5
from conftest import run_atlaspatch
from faults import (
    DELAYS_ENV,
    ENCODER,
    OPTIONS,
    SLIDE_ENCODER,
    STAGES,
    assert_crash_leftovers_are_safe,
    assert_finished_h5,
    assert_same_h5,
    dead_pid,
    kill_in_stage,
    kill_plans,
    launcher_command,
    lock_fields,
    offline_env,
    output_files,
    summary,
    write_lock,
)

CMU = "CMU-1-Small-Region"
STEMS = (CMU, f"{CMU}.pyramid")


def encode(slides: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_atlaspatch("encode-slide", slides, "-o", out, *OPTIONS, env=offline_env(**env))


def assert_clean_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def failures(stderr: str) -> dict[str, str]:
    """{slide: reason} from the FAILED lines (one line each)."""
    found = [line.removeprefix("FAILED ").split(": ", 1) for line in stderr.splitlines() if line.startswith("FAILED ")]
    return dict(found)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, cmu_pyramid: Path) -> Path:
    folder = tmp_path_factory.mktemp("fault-slides")
    for path in (cmu_svs, cmu_pyramid):
        (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, slides: Path) -> Path:
    """patches/ of one clean, uninterrupted run."""
    out = tmp_path_factory.mktemp("fault-reference")
    assert_clean_exit(encode(slides, out), 0)
    return out / "patches"


def assert_equals_reference(patches: Path, reference: Path) -> None:
    files = output_files(patches)
    assert not (files.temps or files.locks or files.other), files
    assert [p.name for p in files.finals] == sorted(f"{stem}.h5" for stem in STEMS)
    for final in files.finals:
        assert_same_h5(final, reference / final.name)


# ---- 1. SIGKILL inside each stage, then a re-run
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_in_each_stage_leaves_nothing_mistakable_and_a_rerun_equals_a_clean_run(
    seed: int, slides: Path, reference: Path, tmp_path: Path
) -> None:
    """One output directory, killed in tile, then (resuming) in embed-patches, then in embed-slide, then finished."""
    out, plans = tmp_path / "out", kill_plans()
    killed: set[int] = set()
    previous_temps: set[Path] = set()
    for stage in STAGES:
        rng = random.Random(f"{seed}:{stage}")
        pid = kill_in_stage(slides, out, plans[stage], rng, tmp_path / f"{stage}.log")
        killed.add(pid)
        files = assert_crash_leftovers_are_safe(out / "patches", killed)
        owners = {(lock_fields(lock).get("pid"), lock_fields(lock).get("phase")) for lock in files.locks}
        assert (str(pid), stage) in owners, f"the kill missed {stage}: {owners}"
        assert not previous_temps & set(files.temps), "a re-run kept the temp files of the run killed before it"
        previous_temps = set(files.temps)
    result = encode(slides, out)
    assert_clean_exit(result, 0)
    assert_equals_reference(out / "patches", reference)


# ---- 2. locks
def test_dead_and_stale_locks_are_taken_over_and_live_ones_fail_only_their_slide(tmp_path: Path, cmu_svs: Path) -> None:
    """Copies of the slide, each with a lock: a dead pid here, a pid here that a process started after the lock
    holds now (reused after a crash or a reboot), a day-old lock of another host and an empty lock a minute old (a
    run killed between creating and writing it) are taken over, with the dead run's temp file removed;
    a live pid here and a fresh lock of another host are waited for (ATLASPATCH_LOCK_WAIT_S=1), then fail that slide
    alone with one line."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for stem in ("dead", "reused", "empty", "live", "old_remote", "fresh_remote"):
        (folder / f"{stem}.svs").symlink_to(cmu_svs)
    patches, host, now = tmp_path / "out" / "patches", socket.gethostname(), time.time()
    write_lock(patches / "dead.lock", dead_pid(), host, now)
    write_lock(patches / "live.lock", os.getpid(), host, now)  # this test process: alive for the whole run
    write_lock(patches / "reused.lock", os.getpid(), host, now - 86400)  # written a day before this process started
    write_lock(patches / "old_remote.lock", 4242, "elsewhere.example", now - 2 * 86400)
    write_lock(patches / "fresh_remote.lock", 4242, "elsewhere.example", now)
    (patches / "empty.lock").write_text("")
    os.utime(patches / "empty.lock", (now - 60, now - 60))
    dead_temp = patches / f".dead.h5.tmp.{'0' * 32}"
    dead_temp.write_bytes(b"half an H5 from the dead run")
    held = {stem: (patches / f"{stem}.lock").read_text() for stem in ("live", "fresh_remote")}

    result = encode(folder, tmp_path / "out", ATLASPATCH_LOCK_WAIT_S="1")

    assert_clean_exit(result, 1)
    table = summary(result.stdout)
    for stem in ("dead", "reused", "empty", "old_remote"):
        assert table[stem]["status"] == "ok" and not (patches / f"{stem}.lock").exists()
        assert_finished_h5(patches / f"{stem}.h5")
    assert not dead_temp.exists()
    reasons = failures(result.stderr)
    assert sorted(reasons) == ["fresh_remote", "live"]
    assert reasons["live"] == (
        f"{patches / 'live.lock'} is held by pid {os.getpid()} on {host}; wait for it to finish or remove the lock"
    )
    assert "is held by pid 4242 on elsewhere.example" in reasons["fresh_remote"]
    for stem, payload in held.items():
        assert (patches / f"{stem}.lock").read_text() == payload and not (patches / f"{stem}.h5").exists()


def test_a_live_lock_is_waited_for_and_the_run_goes_on_when_it_is_released(
    slides: Path, reference: Path, tmp_path: Path
) -> None:
    """Another process holds the second slide's lock: the run tiles the first slide, then waits (not fails) until
    the holder lets go, then finishes both."""
    patches = tmp_path / "out" / "patches"
    patches.mkdir(parents=True)
    holder_code = (
        "import sys; from pathlib import Path; from atlaspatch.h5.locks import SlideLock\n"
        "with SlideLock(Path(sys.argv[1]), slide='x'):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    second = patches / f"{STEMS[0]}.lock"  # sorted: the pyramid comes first
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(second)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        run = subprocess.Popen(launcher_command(slides, tmp_path / "out"), stdout=sink, stderr=subprocess.STDOUT,
                               env=offline_env(ATLASPATCH_LOCK_WAIT_S="300"))  # fmt: skip
    try:
        first, deadline = patches / f"{STEMS[1]}.h5", time.monotonic() + 300
        while not first.exists():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(1.0)  # the run is now at the second slide's lock (it claims right after segmenting the first)
        assert run.poll() is None and not (patches / f"{STEMS[0]}.h5").exists(), log.read_text()
        assert lock_fields(second)["pid"] == str(holder.pid)
    finally:
        holder.communicate("")  # lets go of the lock
    assert run.wait(timeout=300) == 0, log.read_text()
    assert_equals_reference(patches, reference)


# ---- 3. two runs at once
def test_two_concurrent_runs_on_one_output_both_succeed_and_do_each_step_once(
    slides: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = offline_env(**{DELAYS_ENV: "segment=0.3,tile=0.3,embed-slide=0.3", "ATLASPATCH_TEST_BATCH_SLEEP": "0.1"})
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    runs = []
    for log in logs:
        with log.open("wb") as sink:
            runs.append(subprocess.Popen(launcher_command(slides, out), stdout=sink, stderr=subprocess.STDOUT, env=env))
    assert runs[0].poll() is None, "the runs should overlap"
    codes = [run.wait(timeout=300) for run in runs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    assert_equals_reference(out / "patches", reference)
    tables = [summary(output) for output in outputs]
    for stem in STEMS:
        rows = [table[stem] for table in tables]
        assert sorted(row["H5"] for row in rows) == ["reused", "tiled"], rows  # serialised by the slide's lock
        assert sum(int(row["features computed"]) for row in rows) == 1, rows
        assert sum(int(row["embeddings computed"]) for row in rows) == 1, rows


# ---- 4. malformed inputs
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _coords_of_shape(columns: int | None) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as handle:
            coords = handle[schema.COORDS][()]
            del handle[schema.COORDS]
            handle[schema.COORDS] = coords[:, 0] if columns is None else coords[:, :columns]

    return edit


def _drop_feature_rows(path: Path) -> None:
    """features/<encoder> with 5 rows fewer than coords, still flagged complete."""
    with h5py.File(path, "r+") as handle:
        dataset = handle[f"{schema.FEATURES}/{ENCODER}"]
        attrs, values = dict(dataset.attrs), dataset[()]
        del handle[f"{schema.FEATURES}/{ENCODER}"]
        handle.create_dataset(f"{schema.FEATURES}/{ENCODER}", data=values[:-5]).attrs.update(attrs)


BROKEN_H5 = {"truncated_h5": _truncate, "coords_1d": _coords_of_shape(None), "coords_3col": _coords_of_shape(3),
             "short_features": _drop_feature_rows}  # fmt: skip


def test_malformed_inputs_fail_alone_with_one_line_or_are_repaired(
    slides: Path, reference: Path, tmp_path: Path, cmu_svs: Path
) -> None:
    folder, patches = tmp_path / "slides", tmp_path / "out" / "patches"
    folder.mkdir()
    patches.mkdir(parents=True)
    for stem in ("good", *BROKEN_H5):
        (folder / f"{stem}.svs").symlink_to(cmu_svs)
    shutil.copyfile(cmu_svs, folder / "renamed.ndpi")  # an Aperio file under another vendor's extension
    shutil.copyfile(cmu_svs, folder / "renamed.txt")  # not a slide extension: not a slide in a folder
    (folder / "empty.svs").write_bytes(b"")
    for stem, damage in BROKEN_H5.items():
        shutil.copyfile(reference / f"{CMU}.h5", patches / f"{stem}.h5")
        damage(patches / f"{stem}.h5")
    kept = {stem: (patches / f"{stem}.h5").read_bytes() for stem in ("truncated_h5", "coords_1d", "coords_3col")}

    result = encode(folder, tmp_path / "out")

    assert_clean_exit(result, 1)
    table = summary(result.stdout)
    assert sorted(table) == sorted(["good", "renamed", "empty", *BROKEN_H5])  # renamed.txt is no slide
    reasons = failures(result.stderr)
    assert sorted(reasons) == ["coords_1d", "coords_3col", "empty", "truncated_h5"]
    assert reasons["empty"] == "empty.svs: empty file"
    assert reasons["truncated_h5"].startswith("existing truncated_h5.h5 is unreadable (truncated or corrupt")
    for stem, columns in (("coords_1d", "(82,)"), ("coords_3col", "(82, 3)")):
        assert reasons[stem].startswith(f"existing {stem}.h5 is malformed (coords has shape {columns}")
    for stem, content in kept.items():  # refused, never replaced: the user decides
        assert "move it aside" in reasons[stem] and (patches / f"{stem}.h5").read_bytes() == content
    for stem in ("good", "renamed", "short_features"):
        assert table[stem]["status"] == "ok", table[stem]
        assert_finished_h5(patches / f"{stem}.h5")
    assert (table["short_features"]["features computed"], table["short_features"]["embeddings computed"]) == ("1", "1")
    with h5py.File(patches / "short_features.h5", "r") as repaired, h5py.File(reference / f"{CMU}.h5", "r") as clean:
        features = f"{schema.FEATURES}/{ENCODER}"
        assert np.array_equal(repaired[features][()], clean[features][()])
        embedding = f"{schema.SLIDE_FEATURES}/{SLIDE_ENCODER}"
        assert np.array_equal(repaired[embedding][()], clean[embedding][()])
    assert inspect_h5(patches / "renamed.h5").num_patches == inspect_h5(reference / f"{CMU}.h5").num_patches


MPP_CSVS = {
    "not_a_number": ("wsi,mpp\nCMU-1-Small-Region.svs,abc\n", "line 2: mpp 'abc' is not a number"),
    "negative": ("wsi,mpp\nCMU-1-Small-Region.svs,-0.5\n", "line 2: needs a slide name and a positive mpp"),
    "no_slide_name": ("wsi,mpp\n,0.5\n", "line 2: needs a slide name and a positive mpp"),
    "no_header": ("CMU-1-Small-Region.svs,0.5\n", "needs a header with columns wsi,mpp"),
    "header_only": ("wsi,mpp\n\n", "no rows"),
}


@pytest.mark.parametrize("case", sorted(MPP_CSVS))
def test_bad_mpp_csv_is_refused_up_front_with_one_line(case: str, slides: Path, tmp_path: Path) -> None:
    text, message = MPP_CSVS[case]
    csv = tmp_path / "mpp.csv"
    csv.write_text(text)
    result = run_atlaspatch("encode-slide", slides, "-o", tmp_path / "out", *OPTIONS, "--mpp-csv", csv)
    assert_clean_exit(result, 2)
    assert result.stderr.startswith("Error: mpp CSV") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_implausible_mpp_in_the_csv_fails_that_slide_alone(slides: Path, tmp_path: Path) -> None:
    csv = tmp_path / "mpp.csv"
    csv.write_text(f"wsi,mpp\n{CMU}.svs,500\n")
    result = run_atlaspatch("encode-slide", slides, "-o", tmp_path / "out", *OPTIONS, "--mpp-csv", csv)
    assert_clean_exit(result, 1)
    reasons = failures(result.stderr)
    assert list(reasons) == [CMU] and "500" in reasons[CMU], result.stderr
    assert summary(result.stdout)[f"{CMU}.pyramid"]["status"] == "ok"
    assert not (tmp_path / "out" / "patches" / f"{CMU}.h5").exists()


@pytest.mark.parametrize("content", ["nothing", "no_slide_extension"])
def test_a_directory_without_slides_is_refused_up_front(content: str, tmp_path: Path, cmu_svs: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    if content == "no_slide_extension":
        shutil.copyfile(cmu_svs, folder / "CMU-1-Small-Region.txt")
    result = run_atlaspatch("encode-slide", folder, "-o", tmp_path / "out", *OPTIONS)
    assert_clean_exit(result, 2)
    assert result.stderr.startswith(f"Error: {folder}: no slides found") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_h5_made_from_another_slide_is_never_reused(tmp_path: Path, cmu_svs: Path, tiny_svs: Path) -> None:
    """The same stem, another slide (another folder, a replaced file): every command that would reuse the H5 (its
    tissue, coords, features or embedding) refuses it up front, naming both sizes, and nothing is changed."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, slide in ((first, cmu_svs), (second, tiny_svs)):
        folder.mkdir()
        (folder / "x.svs").symlink_to(slide)
    out = tmp_path / "out"
    assert_clean_exit(encode(first, out), 0)
    h5 = out / "patches" / "x.h5"
    before = h5.read_bytes()
    refused = "x.h5 was made from a 2220x2967 px slide, not this 16x16 px one"
    geometry = ("--patch-size", "224", "--target-mag", "20")
    runs = {
        "encode-slide": encode(second, out),
        "segment-and-get-coords": run_atlaspatch(
            "segment-and-get-coords", second, "-o", out, *geometry, "--segmenter", "otsu", "--device", "cpu"
        ),
        "segment": run_atlaspatch("segment", second / "x.svs", "-o", out, "--segmenter", "otsu", "--device", "cpu"),
        "tile": run_atlaspatch("tile", second / "x.svs", "--h5", h5, "-o", tmp_path / "tiled", *geometry),
    }
    for command, result in runs.items():
        assert_clean_exit(result, 2)
        assert refused in result.stderr, (command, result.stderr)
    assert h5.read_bytes() == before
    assert not (tmp_path / "tiled" / "patches" / "x.h5").exists()
    assert_clean_exit(encode(first, out), 0)  # its own slide still reuses it
