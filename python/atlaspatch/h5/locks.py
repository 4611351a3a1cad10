"""Per-slide lock files. A lock whose owner has died is detected and taken over."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LockHeld

STALE_AFTER_S = float(os.environ.get("ATLASPATCH_LOCK_STALE_S", 6 * 3600))
WAIT_S = float(os.environ.get("ATLASPATCH_LOCK_WAIT_S", 3600))
POLL_S = 0.2
PID_REUSE_SLACK_S = 5.0  # /proc's boot time is whole seconds and follows clock adjustments


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float

    def is_alive(self) -> bool:
        if self.host != socket.gethostname():
            return time.time() - self.started < STALE_AFTER_S
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process
        # After a crash or a reboot the pid may belong to a process that started after the lock was written.
        started = process_start_time(self.pid)
        return started is None or started <= self.started + PID_REUSE_SLACK_S


def process_start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None where /proc cannot tell (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if "btime " in line)
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22; the name before ")" may hold spaces
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _read_owner(path: Path) -> LockOwner | None:
    try:
        fields = dict(part.split("=", 1) for part in path.read_text().strip().split(",") if "=" in part)
        return LockOwner(int(fields["pid"]), fields["host"], float(fields["time"]))
    except (OSError, KeyError, ValueError):
        return None


class SlideLock:
    """`with SlideLock(path, slide=stem):` — exclusive ownership of one slide's outputs.

    A lock held by a live process is waited for (up to ATLASPATCH_LOCK_WAIT_S), so that two runs on the same
    output directory serialise per slide instead of clobbering each other; a lock of a dead process is removed.
    """

    def __init__(self, path: Path, slide: str = "", phase: str = "", wait_s: float = WAIT_S) -> None:
        self.path = path
        self.payload = f"pid={os.getpid()},host={socket.gethostname()},time={time.time():.3f},slide={slide}"
        if phase:
            self.payload += f",phase={phase}"
        self.wait_s = wait_s
        self.took_over: LockOwner | None = None

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(self.payload)
        return True

    def _remove_if_stale(self) -> None:
        owner = _read_owner(self.path)
        if owner is None:
            # unreadable payload: being written right now, or garbage; judge it by age
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < 5:
                return
        elif owner.is_alive():
            return
        self.took_over = owner
        self.path.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while not self._try_create():
            self._remove_if_stale()
            if self._try_create():
                return
            if time.monotonic() >= deadline:
                owner = _read_owner(self.path)
                who = f"pid {owner.pid} on {owner.host}" if owner else "another process"
                raise LockHeld(f"{self.path} is held by {who}; wait for it to finish or remove the lock")
            time.sleep(POLL_S)

    def release(self) -> None:
        if _read_owner(self.path) == _read_owner_payload(self.payload):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> SlideLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner_payload(payload: str) -> LockOwner | None:
    fields = dict(part.split("=", 1) for part in payload.split(",") if "=" in part)
    return LockOwner(int(fields["pid"]), fields["host"], float(fields["time"]))
