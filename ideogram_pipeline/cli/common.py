"""The command group and what every command shares: settings and errors."""

from __future__ import annotations

import atexit
import gc

import click

from ideogram_pipeline.settings import Settings, SettingsError, load_settings

__all__ = ["main", "max_cost_option", "settings_or_exit"]


def settings_or_exit() -> Settings:
    """Validated settings, or one clear line and a non-zero exit."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ideogram-pipeline")
def main() -> None:
    """Batch Ideogram image generation: CSV in, stored images and queryable metadata out."""
    skip_collection_at_exit()


def skip_collection_at_exit() -> None:
    """At exit, freeze every object so the interpreter's teardown does not walk them all.

    A command that ran a batch holds Dagster, DuckDB, pyarrow and the run's objects; the
    cyclic collections of Python's shutdown took about a second after the summary was
    printed (BENCHMARKS.md section 8). Nothing is skipped that a command relies on: atexit
    handlers still run, objects are still released by reference count, and everything a
    run writes is flushed and closed before the command returns. Registered once however
    often it is called (``CliRunner`` tests invoke the group many times in one process).
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


#: ``--max-cost USD``: the cost guard of every command that spends (``run``, ``apply``).
max_cost_option = click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Refuse to start when the estimated cost of what would be sent is above USD.",
)
