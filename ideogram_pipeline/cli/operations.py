"""``apply``: run an operation (upscale, describe, ...) over images selected from the history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.ideogram.operations import OPERATIONS

#: The operations' settings as options: ``--image-weight 40`` is the column ``image_weight``.
SETTING_OPTIONS = (
    ("resemblance", "upscale: how close to the source, 1-100"),
    ("detail", "upscale: how much detail to add, 1-100"),
    ("image_weight", "remix: the source's weight, 1-100"),
    ("resolution", "reframe (required), remix: e.g. 1024x1024"),
    ("aspect_ratio", "remix: e.g. 16x9"),
    ("rendering_speed", "remix, reframe, replace_background: TURBO, DEFAULT, QUALITY, ..."),
    ("magic_prompt", "upscale, remix, replace_background: AUTO, ON, OFF"),
    ("style_type", "remix: AUTO, GENERAL, REALISTIC, DESIGN, ..."),
    ("style_preset", "remix, reframe, replace_background: a 3.0 style preset"),
    ("style_codes", "remix, reframe, replace_background: 8-digit hex codes, |-separated"),
    ("color_palette", "remix, reframe, replace_background: a preset or #RRGGBB|..."),
    ("negative_prompt", "remix: what to leave out"),
    ("seed", "a seed, for repeatable results"),
    ("num_images", "images per source (not describe or remove_background)"),
)


def _setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, text in reversed(SETTING_OPTIONS):
        command = click.option(f"--{name.replace('_', '-')}", name, default=None, help=text)(
            command
        )
    return command


@main.command()
@click.argument("operation", type=click.Choice(sorted(OPERATIONS)))
@click.option(
    "--where",
    required=True,
    help="SQL condition over the `generations` view choosing the images, e.g. "
    "\"list_contains(tags, 'best')\".",
)
@click.option("--prompt", default="", help="The prompt (remix, replace_background; upscale).")
@_setting_options
@click.option("--dry-run", is_flag=True, help="Print the cost estimate only; send nothing.")
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Refuse to start when the estimated cost of the images to send is above USD.",
)
def apply(
    operation: str,
    where: str,
    prompt: str,
    dry_run: bool,
    max_cost: float | None,
    **setting_values: str | None,
) -> None:
    """Run OPERATION on every stored image --where selects, as a batch of its own.

    The batch key comes from the operation, the selection and the options, so running the
    same command again is a re-run: images already done cost nothing again. Each result is
    a record of its own with `operation` and `derived_from` (see `lineage ID`); describe
    writes the text into the source's `description`.
    """
    import duckdb

    from ideogram_pipeline.batches.selections import (
        OperationSelection,
        option_problem,
        select_images,
        write_selection,
    )
    from ideogram_pipeline.cli.batch import ensure_dagster_home, run_csv
    from ideogram_pipeline.history.sandbox import QueryLimitReached, QueryRefused

    settings = settings_or_exit()
    chosen = {name: value for name, value in setting_values.items() if value is not None}
    selection = OperationSelection(operation, where, prompt, chosen)
    try:
        ids = select_images(settings, where)
    except (QueryRefused, QueryLimitReached, duckdb.Error) as exc:
        raise click.ClickException(f"--where: {exc}") from None
    if not ids:
        click.echo(f"{operation}: no stored image matches --where {where!r}; nothing to do")
        return
    folder = ensure_dagster_home() / "selections"
    selected = write_selection(selection, ids, folder)
    if problem := option_problem(selected):
        setting, reason = problem
        raise click.ClickException(f"--{setting.replace('_', '-')}: {reason}")
    click.echo(
        f"{operation}: {len(ids)} image(s) selected -> batch {selected.key} ({selected.path})",
        err=True,
    )
    if dry_run:
        from ideogram_pipeline.cli.estimate import print_estimate

        print_estimate(selected.path, selected.key, max_cost)
        return
    config: dict[str, Any] = {}
    if max_cost is not None:
        config["max_cost_usd"] = max_cost
    run_csv(selected.path, selected.key, config)
