"""What every command shares: the typer app, the console, the clear-failure exit, the progress bar, the recipe."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.prefect_exit import quiet_temporary_server
from pretrain.config import PipelineConfig, load_recipe
from pretrain.paths import parquet_files, require_folder, root_is_configured

# An offline tool: the local Prefect server must not try to phone home (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


app = typer.Typer(
    help="Common Crawl in, a trained model out. Each command runs one stage; `run` runs the pipeline.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _every_command(ctx: typer.Context) -> None:
    # A temporary Prefect server is stopped only once what the command ran is recorded (no shutdown tracebacks).
    ctx.call_on_close(quiet_temporary_server())


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def clear_failures() -> tuple[type[Exception], ...]:
    """Failures whose message says everything (which folder, which field, which URL): no traceback, exit 2."""
    from flows.common import OutputInUse, OutputNotWritable
    from pretrain.outputs import OutputRefused
    from pretrain.paths import UnsafePathError
    from tasks.evaluation.items import EvalDataMissing
    from tasks.evaluation.models import ModelLoadError
    from tasks.fetch import FetchError
    from tasks.ray_runtime import RayUnreachable

    return (OutputInUse, OutputNotWritable, OutputRefused, UnsafePathError, FetchError, RayUnreachable,
            ModelLoadError, EvalDataMissing)


def require_input(folder: Path) -> None:
    """Say at once that an input folder does not exist, holds no shards, or a shard that is not a regular file.
    Under PRETRAIN_DATA_ROOT a relative path is the root's, so the flow checks it after resolving (and confining) it."""
    if not root_is_configured():
        require_folder(folder, "--input")
        parquet_files(folder)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def run_with_progress(label: str, run):
    """Run a flow, showing its report_progress calls as a rich progress bar."""
    from pretrain.progress import progress_to

    with progress_bar() as bar:
        task_id = bar.add_task(label, total=None)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task_id, description=f"{label}: {stage}", completed=done, total=total)

        with progress_to(update), clear_failures_without_traceback():
            return run()


def run_stage(label: str, output: Path, run: Callable[[], dict], check: Callable[[], None] | None = None) -> dict:
    """Run a stage's flow for a command: ``check`` its inputs first, show its progress; the flow's summary.

    Shards that failed after their retries exit 1 naming report.json (the others were written);
    a failure whose message says everything (a missing folder, a bad shard, a locked output) exits 2.
    """
    from flows.runner import StageFailed

    try:
        if check is not None:
            check()
        return run_with_progress(label, run)
    except StageFailed as error:
        report = output / "report.json"  # dedup stops at a failed phase before writing one
        fail(f"{error}\nreport: {report}" if report.is_file() else str(error), code=1)
    except (*clear_failures(), FileNotFoundError, ValueError) as error:
        fail(str(error))


class _NoTracebackFor(logging.Filter):
    """Keeps Prefect's "Encountered exception" line on the terminal but drops its traceback when the
    exception is one the command reports itself as ``error: <message>`` (the Prefect UI keeps it all)."""

    def __init__(self, kinds: tuple[type[BaseException], ...]):
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.kinds):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def clear_failures_without_traceback():
    """While a flow runs, the terminal shows no traceback for a failure the command turns into ``error:``."""
    from flows.runner import StageFailed

    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    quiet = _NoTracebackFor((*clear_failures(), StageFailed, FileNotFoundError, ValueError))
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def recipe_or_default(config: Optional[Path]) -> PipelineConfig:
    return load_recipe(str(config)) if config else PipelineConfig()


def print_drops(dropped: dict) -> None:
    for reason, count in dropped.items():
        console.print(f"  {reason}: {count}")
