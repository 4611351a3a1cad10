"""Progress bars and the closing per-slide table."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Logs and CI capture output without a terminal: keep lines whole there instead of wrapping at 80 columns.
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
stdout = Console(width=None if sys.stdout.isatty() else 200)


class Outcome(Protocol):
    stem: str
    status: str
    note: str
    seconds: float

    @property
    def failed(self) -> bool: ...


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=verbose, show_time=verbose, markup=False)],
        force=True,
    )
    for noisy in ("h5py", "PIL", "matplotlib", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _bars(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
        disable=not enabled,
    )


@contextmanager
def slide_progress(total: int, label: str = "slides") -> Iterator[Any]:
    with _bars(total > 0) as progress:
        yield PipelineProgress(progress).slides(label, total)


class PipelineProgress:
    """One bar per stage of a multi-stage run: slides tiled, patches embedded, slides embedded."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def slides(self, label: str, total: int) -> Any:
        task = self._progress.add_task(label, total=total, last="")

        def advance(outcome: Outcome) -> None:
            self._progress.update(task, advance=1, last=f"{outcome.stem}: {outcome.status}")

        return advance

    def patches(self, label: str, total: int) -> Any:
        task = self._progress.add_task(label, total=total, last="")

        def advance(count: int) -> None:
            self._progress.update(task, advance=count)

        return advance


@contextmanager
def pipeline_progress(enabled: bool = True) -> Iterator[PipelineProgress]:
    with _bars(enabled) as progress:
        yield PipelineProgress(progress)


def summary_table(outcomes: Sequence[Outcome], columns: Sequence[tuple[str, str]]) -> Table:
    """columns: (header, attribute) pairs shown between the slide name and the status."""
    table = Table(title="Per-slide summary", show_lines=False)
    table.add_column("slide")
    for header, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("note / reason")
    for outcome in outcomes:
        values = [getattr(outcome, attr) for _, attr in columns]
        status = f"[red]{outcome.status}[/red]" if outcome.failed else outcome.status
        table.add_row(
            outcome.stem,
            *("-" if v is None else str(v) for v in values),
            status,
            f"{outcome.seconds:.1f}",
            outcome.note,
        )
    return table


def print_summary(outcomes: Sequence[Outcome], columns: Sequence[tuple[str, str]]) -> int:
    """Print the table and a closing line; return the exit code (0 only when every slide succeeded)."""
    stdout.print(summary_table(outcomes, columns))
    failed = [o for o in outcomes if o.failed]
    stdout.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} slide(s) succeeded, {len(failed)} failed")
    for outcome in failed:
        print(f"FAILED {outcome.stem}: {outcome.note}", file=sys.stderr)
    return 1 if failed else 0
