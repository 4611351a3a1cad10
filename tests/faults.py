"""Fault-injection helpers for tests/test_faults.py: a launcher that slows chosen stages, SIGKILL inside a stage,
and checks that an output directory never holds something a re-run would take for finished work.

Run as a script, this file is `atlaspatch` itself with sleeps added inside the stages named in
ATLASPATCH_TEST_STAGE_DELAYS (``segment=0.5,tile=0.5,embed-slide=0.6``: seconds per slide, slept *inside* the
stage, while its lock is held and, for tile and embed-slide, while its temp H5 is open). Per-batch sleeps of the
patch-feature stage come from the tiny_conv plugin (ATLASPATCH_TEST_BATCH_SLEEP). Sleeps change no output.
"""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "plugins" / "tiny_conv.py"
ENCODER = "tiny_conv"
SLIDE_ENCODER = f"mean-{ENCODER}"
DIM = 16
OPTIONS = (
    "--slide-encoders", SLIDE_ENCODER, "--feature-plugin", str(PLUGIN), "--patch-size", "224", "--target-mag", "20",
    "--segmenter", "otsu", "--device", "cpu", "--feature-num-workers", "0", "--feature-batch-size", "16",
    "--feature-precision", "float32",
)  # fmt: skip

STAGES = ("tile", "embed-patches", "embed-slide")  # the lock phases of encode-slide, in order
# attrs that record when and how long a run took: they differ between any two runs by design
VOLATILE_ATTRS = frozenset({"creation_date", "seconds"})
# hashes the features dataset's attrs (which hold the volatile ones): checked against the file's own features
FINGERPRINT_ATTR = "source_features_sha256"
BATCH_SLEEP_ENV = "ATLASPATCH_TEST_BATCH_SLEEP"
DELAYS_ENV = "ATLASPATCH_TEST_STAGE_DELAYS"


# ---- the launcher (this file run as a script)
def _delayed(function: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return function(*args, **kwargs)

    return wrapper


def install_stage_delays(spec: str) -> None:
    """Sleep inside the named stages: segment (thumbnail + mask), tile (temp H5 open), embed-slide (temp H5 open)."""
    import atlaspatch.pipeline as pipeline
    import atlaspatch.stages.embed_slide as embed_slide
    import atlaspatch.stages.tile as tile

    targets = {
        "segment": (pipeline, "segment_slides"),
        "tile": (tile, "_write_passports"),
        "embed-slide": (embed_slide, "write_embeddings"),
    }
    for item in filter(None, spec.split(",")):
        stage, seconds = item.split("=")
        module, name = targets[stage]
        setattr(module, name, _delayed(getattr(module, name), float(seconds)))


def _launch() -> None:
    install_stage_delays(os.environ.get(DELAYS_ENV, ""))
    from atlaspatch.cli import main

    main()


# ---- running the pipeline
def offline_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ATLASPATCH_MODEL_DIR": "", **extra}


def launcher_command(slides: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "encode-slide", str(slides), "-o", str(out), *OPTIONS,
            *extra]  # fmt: skip


def start(slides: Path, out: Path, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(launcher_command(slides, out), stdout=sink, stderr=subprocess.STDOUT, env=dict(env))


# ---- locks
def lock_fields(path: Path) -> dict[str, str]:
    """A lock file's payload (pid=..,host=..,time=..,slide=..,phase=..), {} if it vanished or is partial."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return dict(part.split("=", 1) for part in text.strip().split(",") if "=" in part)


def lock_phases(patches: Path) -> set[str]:
    return {lock_fields(path).get("phase", "") for path in patches.glob("*.lock")} - {""}


def write_lock(path: Path, pid: int, host: str, started: float, phase: str = "tile") -> None:
    """A lock in the format of atlaspatch.h5.locks.SlideLock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"pid={pid},host={host},time={started:.3f},slide={path.stem},phase={phase}")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- killing inside a stage
@dataclass(frozen=True)
class KillPlan:
    stage: str  # one of STAGES
    window_s: float  # the stage lasts at least this long after its first lock appears (the sleeps guarantee it)
    env: Mapping[str, str]  # the sleeps that make the stage that long


def kill_plans(batch_sleep: float = 0.25, tile_sleep: float = 0.5, slide_sleep: float = 0.6) -> dict[str, KillPlan]:
    """Sleeps only in the stage to be killed, so the run gets there fast; the window is ≤ the slept time."""
    return {
        "tile": KillPlan("tile", 2 * tile_sleep, {DELAYS_ENV: f"segment={tile_sleep},tile={tile_sleep}"}),
        "embed-patches": KillPlan("embed-patches", 4 * batch_sleep, {BATCH_SLEEP_ENV: str(batch_sleep)}),
        "embed-slide": KillPlan("embed-slide", slide_sleep, {DELAYS_ENV: f"embed-slide={slide_sleep}"}),
    }


def wait_for_phase(process: subprocess.Popen[bytes], patches: Path, phase: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while phase not in lock_phases(patches):
        if process.poll() is not None:
            raise AssertionError(f"the run ended before reaching {phase}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {phase} lock after {timeout}s:\n{log.read_text()}")
        time.sleep(0.01)


def kill_in_stage(slides: Path, out: Path, plan: KillPlan, rng: random.Random, log: Path) -> int:
    """Start encode-slide, SIGKILL it a seeded random time into `plan.stage`; returns the killed pid."""
    process = start(slides, out, log, offline_env(**plan.env))
    try:
        wait_for_phase(process, out / "patches", plan.stage, log, timeout=120)
        time.sleep(rng.uniform(0.0, 0.75 * plan.window_s))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.pid


# ---- what an output directory may hold after a crash
TEMP_NAME = re.compile(r"^\.(?P<final>.+\.h5)\.tmp\.[0-9a-f]{32}$")


@dataclass
class OutputFiles:
    finals: list[Path]
    temps: list[Path]
    locks: list[Path]
    other: list[Path]


def output_files(patches: Path) -> OutputFiles:
    found = OutputFiles([], [], [], [])
    for path in sorted(patches.iterdir()) if patches.exists() else []:
        if TEMP_NAME.match(path.name):
            found.temps.append(path)
        elif path.suffix == ".h5" and not path.name.startswith("."):
            found.finals.append(path)
        elif path.suffix == ".lock":
            found.locks.append(path)
        else:
            found.other.append(path)
    return found


def assert_finished_h5(path: Path) -> None:
    """What a re-run would reuse must be whole: valid per the package's own checks, nothing partial or stale."""
    from atlaspatch.encoders.slide import slide_encoder_registry
    from atlaspatch.h5 import schema
    from atlaspatch.h5.inspect import complete_features, inspect_h5
    from atlaspatch.stages.embed_slide import missing_embeddings

    state = inspect_h5(path)  # raises on a truncated or malformed file
    assert state.is_tiled and state.num_patches, f"{path.name} is not finished tiling"
    for name in state.features:
        assert not name.startswith(schema.TEMP_FEATURE_PREFIX), f"{path.name} holds a temp dataset {name}"
        assert complete_features(state, name, DIM), f"{path.name}: features/{name} is partial"
    if state.slide_features:
        spec = slide_encoder_registry([str(PLUGIN)]).get(SLIDE_ENCODER)
        assert state.slide_features == [SLIDE_ENCODER]
        assert missing_embeddings(path, [spec], force=False) == [], f"{path.name}: stale slide embedding"


def assert_crash_leftovers_are_safe(patches: Path, killed_pids: set[int]) -> OutputFiles:
    files = output_files(patches)
    assert not files.other, f"unexpected files: {files.other}"
    for final in files.finals:
        assert_finished_h5(final)
    for temp in files.temps:
        final = patches / TEMP_NAME.match(temp.name)["final"]  # type: ignore[index]
        assert final.stem in {lock.stem for lock in files.locks}, f"{temp.name}: a temp with no lock beside it"
    for lock in files.locks:
        fields = lock_fields(lock)
        if not fields:  # killed between creating the lock and writing it: taken over once a few seconds old
            continue
        assert int(fields["pid"]) in killed_pids and not pid_alive(int(fields["pid"])), fields
    return files


# ---- comparing H5 files
def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {key: obj.attrs[key] for key in obj.attrs if key not in VOLATILE_ATTRS}


def _objects(handle: h5py.File) -> dict[str, h5py.HLObject]:
    found: dict[str, h5py.HLObject] = {"/": handle}
    handle.visititems(lambda name, obj: found.__setitem__(name, obj))
    return found


def _assert_same_attrs(name: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(have) == sorted(want), f"{name}: attrs {sorted(have)} != {sorted(want)}"
    for key, value in want.items():
        if key == FINGERPRINT_ATTR:
            continue
        assert np.array_equal(np.asarray(have[key]), np.asarray(value)), f"{name}.{key}: {have[key]!r} != {value!r}"


def assert_same_h5(path: Path, reference: Path) -> None:
    """Same groups, datasets (dtype, shape, values, bit for bit) and attrs, except when-and-how-long attrs."""
    from atlaspatch.stages.embed_slide import features_fingerprint

    with h5py.File(path, "r") as have, h5py.File(reference, "r") as want:
        objects, expected = _objects(have), _objects(want)
        assert sorted(objects) == sorted(expected), f"{path.name}: {sorted(objects)} != {sorted(expected)}"
        for name, obj in expected.items():
            mine = objects[name]
            _assert_same_attrs(name, _attrs(mine), _attrs(obj))
            if isinstance(obj, h5py.Dataset):
                assert mine.dtype == obj.dtype and mine.shape == obj.shape, name
                assert np.array_equal(mine[()], obj[()]), f"{path.name}: {name} differs"
        for name, obj in objects.items():
            if FINGERPRINT_ATTR in obj.attrs:  # each embedding names the features it was computed from
                source = have[f"features/{obj.attrs['source_patch_encoder']}"]
                assert obj.attrs[FINGERPRINT_ATTR] == features_fingerprint(source), name


# ---- the closing summary table
def summary(stdout: str) -> dict[str, dict[str, str]]:
    """{slide: {column: cell}} from encode-slide's per-slide table."""
    rows = [[cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]] for line in stdout.splitlines()]
    rows = [row for row in rows if row]
    header = next(row for row in rows if row[0] == "slide")
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows if row[0] and row is not header}


if __name__ == "__main__":
    _launch()
