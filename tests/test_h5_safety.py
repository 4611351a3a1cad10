"""Crash safety of H5 writes and per-slide locks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlaspatch.errors import H5Error, LockHeld
from atlaspatch.h5.atomic import atomic_h5, leftover_temps, remove_leftover_temps, temp_path_for
from atlaspatch.h5.inspect import inspect_h5
from atlaspatch.h5.locks import SlideLock


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "slide.h5"
    with pytest.raises(RuntimeError), atomic_h5(final) as handle:
        handle.create_dataset("coords", data=np.zeros((3, 5), np.int32))
        raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert leftover_temps(final) == []


def test_atomic_write_from_a_source_never_touches_it(tmp_path: Path) -> None:
    source = tmp_path / "in.h5"
    with h5py.File(source, "w") as handle:
        handle.attrs["stage"] = "segment"
    before = source.read_bytes()
    with atomic_h5(tmp_path / "out.h5", start_from=source) as handle:
        handle.attrs["stage"] = "tile"
    assert source.read_bytes() == before
    with h5py.File(tmp_path / "out.h5") as handle:
        assert handle.attrs["stage"] == "tile"


def test_killed_writer_leaves_only_a_temp_that_the_next_run_removes(tmp_path: Path) -> None:
    final = tmp_path / "slide.h5"
    script = (
        "import sys, time, numpy as np; from pathlib import Path; from atlaspatch.h5.atomic import atomic_h5\n"
        "with atomic_h5(Path(sys.argv[1])) as h:\n"
        "    h.create_dataset('coords', data=np.zeros((10, 5), np.int32)); h.flush(); print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    assert not final.exists()
    assert len(leftover_temps(final)) == 1
    assert not inspect_h5(final).exists  # a re-run sees no finished work
    remove_leftover_temps(final)
    assert leftover_temps(final) == []


@pytest.mark.parametrize("stem", ["a[1]", "a*", "a?b", "plain"])
def test_leftover_temps_are_exactly_this_slides(tmp_path: Path, stem: str) -> None:
    """A stem is text, not a pattern: a slide's temps are found whatever its name holds, and never another's."""
    final = tmp_path / f"{stem}.h5"
    ours = [temp_path_for(final) for _ in range(2)]
    others = [
        temp_path_for(tmp_path / "a1.h5"),  # what "a[1]" or "a?b" would match as a glob
        temp_path_for(tmp_path / f"{stem}x.h5"),  # a stem this one is a prefix of
        tmp_path / f".{stem}.h5.tmp.notauuid",
        tmp_path / f"{stem}.h5",
    ]
    for path in ours + others:
        path.write_bytes(b"x")
    assert leftover_temps(final) == sorted(ours)
    remove_leftover_temps(final)
    assert all(path.exists() for path in others) and not any(path.exists() for path in ours)
    assert leftover_temps(tmp_path / "missing-dir" / "x.h5") == []


def test_truncated_h5_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coords", data=np.zeros((1000, 5), np.int32))
        handle.attrs["num_patches"] = 1000
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(H5Error, match=r"unreadable.*--force"):
        inspect_h5(path)


def test_coords_of_the_wrong_shape_or_count_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coords", data=np.zeros((10,), np.int32))
    with pytest.raises(H5Error, match="coords has shape"):
        inspect_h5(path)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coords", data=np.zeros((10, 5), np.int32))
        handle.attrs["num_patches"] = 12
    with pytest.raises(H5Error, match="num_patches says 12 but coords has 10"):
        inspect_h5(path)


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path = tmp_path / "slide.lock"
    import socket

    lock_path.write_text(f"pid={int(dead.stdout)},host={socket.gethostname()},time={time.time()},slide=slide")
    with SlideLock(lock_path, slide="slide", wait_s=5) as lock:
        assert lock.took_over is not None and lock.took_over.pid == int(dead.stdout)
        assert f"pid={os.getpid()}" in lock_path.read_text()
    assert not lock_path.exists()


def test_lock_of_a_live_process_is_respected(tmp_path: Path) -> None:
    lock_path = tmp_path / "slide.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from atlaspatch.h5.locks import SlideLock\n"
            "with SlideLock(Path(sys.argv[1]), slide='s'):\n    print('held', flush=True); time.sleep(30)\n",
            str(lock_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            SlideLock(lock_path, wait_s=0.5).acquire()
    finally:
        holder.kill()
        holder.wait()
    with SlideLock(lock_path, wait_s=5):  # its owner is dead now
        pass
