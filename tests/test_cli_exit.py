"""The CLI's exit: skips the interpreter's teardown once torch is loaded, but never an exit code, an atexit handler,
buffered output, or a thread still at work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


EXIT_AFTER_TORCH = """
    import atexit, sys
    import torch
    from atlaspatch.cli import exit_without_teardown
    atexit.register(lambda: print("atexit handler ran"))
    sys.stdout.write("buffered, no newline")
    exit_without_teardown({code!r})
"""


def test_exit_code_atexit_handlers_and_buffered_output_survive() -> None:
    for code, status in ((None, 0), (0, 0), (1, 1), (2, 2), (130, 130)):
        result = run_python(EXIT_AFTER_TORCH.format(code=code))
        assert result.returncode == status, result.stderr
        assert result.stdout == "buffered, no newlineatexit handler ran\n"


def test_a_message_exits_1_on_stderr_as_sys_exit_does() -> None:
    result = run_python(EXIT_AFTER_TORCH.format(code="one-line reason"))
    assert result.returncode == 1
    assert result.stderr.strip() == "one-line reason"


def test_a_thread_still_at_work_is_waited_for() -> None:
    result = run_python(
        """
        import threading, time
        import torch
        from atlaspatch.cli import exit_without_teardown
        def work():
            time.sleep(0.5)
            print("thread finished", flush=True)
        threading.Thread(target=work).start()
        exit_without_teardown(0)
        """
    )
    assert result.returncode == 0
    assert result.stdout == "thread finished\n"


def test_the_console_script_keeps_its_exit_codes(tmp_path: Path, cmu_svs: Path) -> None:
    """`main()` as the console script runs it: a refused request after torch was imported still exits 2 with its
    one line."""
    atlaspatch = [sys.executable, "-c", "from atlaspatch.cli import main; main()"]
    version = subprocess.run([*atlaspatch, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("atlaspatch ")
    untiled = tmp_path / "untiled.h5"
    h5py.File(untiled, "w").close()
    refused = subprocess.run(
        [*atlaspatch, "embed-patches", "--slide", str(cmu_svs), "--h5", str(untiled), "--encoders", "resnet50",
         "-o", str(tmp_path / "out"), "--feature-device", "cpu", "--feature-num-workers", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("Error: ") and "no finished coords" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
