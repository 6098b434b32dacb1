"""Lifecycle commands: ``cleanup``, ``pin``, ``unpin``, ``compact`` and ``report``."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ideogram_pipeline.cli.common import main, settings_or_exit

if TYPE_CHECKING:
    from ideogram_pipeline.lifecycle.policy import LifecycleConfig
    from ideogram_pipeline.lifecycle.retention import CleanupPlan
    from ideogram_pipeline.storage import ObjectStore


@contextmanager
def _errors() -> Iterator[None]:
    """Library errors become one line and a non-zero exit."""
    from ideogram_pipeline.history.record_ids import RecordIdError
    from ideogram_pipeline.lifecycle.policy import LifecycleError
    from ideogram_pipeline.storage import StorageError

    try:
        yield
    except (LifecycleError, RecordIdError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None


def _config() -> LifecycleConfig:
    from ideogram_pipeline.lifecycle.policy import load_lifecycle_config

    with _errors():
        return load_lifecycle_config()


def _store() -> tuple[Any, ObjectStore]:
    from ideogram_pipeline.storage import open_store

    settings = settings_or_exit()
    with _errors():
        return settings, open_store(settings)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _human(size: float) -> str:
    from ideogram_pipeline.reports.rendering import human_bytes

    return human_bytes(size)


def _echo_plan(plan: CleanupPlan, verb: str) -> None:
    oldest = plan.oldest.isoformat(timespec="seconds") if plan.oldest else "-"
    newest = plan.newest.isoformat(timespec="seconds") if plan.newest else "-"
    click.echo(
        f"{verb} {plan.count} records ({len(plan.objects)} images, {_human(plan.bytes)}; "
        f"{plan.bytes} bytes), oldest {oldest}, newest {newest}"
    )
    click.echo(
        f"  as of {plan.as_of.isoformat(timespec='seconds')}; policy: {plan.policy.describe()}"
    )
    if plan.count:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(plan.by_status().items()))
        click.echo(f"  by status: {statuses}")
        click.echo(
            f"  partitions: {len(plan.partitions)} ({plan.whole_partitions} emptied, "
            f"{len(plan.partitions) - plan.whole_partitions} thinned out)"
        )
        for part in plan.partitions:
            click.echo(
                f"    date={part['date']} batch={part['batch']}: "
                f"{part['expired']} of {part['total']} records"
            )


def _orphans(fix: bool, grace_hours: float | None) -> None:
    from ideogram_pipeline.lifecycle.orphans import sweep_orphans

    settings, store = _store()
    grace = _config().grace_hours if grace_hours is None else grace_hours
    with _errors():
        report = sweep_orphans(settings, store, grace_hours=grace, fix=fix, by=_who())
    click.echo(
        f"objects under images/: {report.objects_seen}; orphan objects (no row, older than "
        f"{grace:g} h): {len(report.orphan_objects)} ({_human(report.orphan_bytes)}); "
        f"younger objects without a row: {report.young_objects}"
    )
    for info in report.orphan_objects[:50]:
        click.echo(f"  orphan object {info.key} ({info.size} bytes)")
    click.echo(f"dangling rows (stored, object missing): {len(report.dangling_rows)}")
    for row in report.dangling_rows[:50]:
        click.echo(f"  dangling row {row['id']} (batch {row['batch']}, {row['image_key']})")
    if fix:
        click.echo(
            f"fixed: deleted {report.deleted_objects} orphan objects, marked "
            f"{report.marked_rows} rows failed; audit {store.uri(report.audit_key or '')}"
        )
    elif report.orphan_objects or report.dangling_rows:
        click.echo("nothing changed; --fix deletes the orphan objects and marks the rows")


@main.command()
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Delete records older than DAYS (default: retention.toml's default_days; "
    "per-tag overrides such as draft = 7 still apply).",
)
@click.option(
    "--as-of",
    "as_of",
    metavar="DATE",
    help="Judge ages as of this UTC date (YYYY-MM-DD: its midnight) or ISO time; default now.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; change nothing.")
@click.option(
    "--orphans", is_flag=True, help="Sweep for objects without rows and rows without objects."
)
@click.option(
    "--fix", is_flag=True, help="With --orphans: delete orphans, mark dangling records failed."
)
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    help="With --orphans: objects younger than this are never orphans (default 24).",
)
def cleanup(
    older_than: float | None,
    as_of: str | None,
    dry_run: bool,
    orphans: bool,
    fix: bool,
    grace_hours: float | None,
) -> None:
    """Delete images and history records older than the retention period.

    Records tagged keep or pinned (`pin ID`) are never deleted. Usage is rolled up into the
    usage_rollup table for reports before anything goes; then the images, the records (a
    DELETE on both history tables) and the files they leave (vacuum). Safe to interrupt:
    the next run finishes the work. Every real run writes an audit under metadata/audit/.
    """
    if (fix or grace_hours is not None) and not orphans:
        raise click.UsageError("--fix and --grace-hours go with --orphans")
    if orphans:
        if older_than is not None or as_of or dry_run:
            raise click.UsageError("--orphans runs on its own (without it, nothing is changed)")
        _orphans(fix, grace_hours)
        return
    from ideogram_pipeline.lifecycle.policy import parse_as_of
    from ideogram_pipeline.lifecycle.retention import run_cleanup

    settings, store = _store()
    policy = _config().retention.with_default(older_than)
    with _errors():
        moment = parse_as_of(as_of)
        result = run_cleanup(
            settings, store, policy, moment, dry_run=dry_run, reason="cli cleanup", by=_who()
        )
    for cleanup_id in result.resumed:
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{verb} the missing audit of interrupted cleanup {cleanup_id}")
    if dry_run:
        click.echo("DRY RUN: nothing was deleted.")
        _echo_plan(result.plan, "would delete")
        return
    _echo_plan(result.plan, "deleted")
    for record_id in result.kept_meanwhile:
        click.echo(f"  kept {record_id}: pinned or tagged keep while the cleanup ran")
    if result.audit_key:
        click.echo(f"  audit: {store.uri(result.audit_key)}")


def _pin_command(action: str) -> Callable[[str], None]:
    def command(record_id: str) -> None:
        from ideogram_pipeline.history.pins import set_pinned

        settings, _ = _store()
        with _errors():
            change = set_pinned(settings, [record_id], action == "pin")
        for full_id in change.changed:
            note = (
                " (a superseded image, no longer in `generations`: the pin is in its audit "
                "records, which retention honours)"
                if full_id in change.superseded
                else ""
            )
            click.echo(f"{action}ned {full_id}{note}")
        for full_id in change.unchanged:
            click.echo(f"{full_id} was already {'pinned' if action == 'pin' else 'not pinned'}")

    return command


main.command(
    "pin",
    help="Protect record ID (or a unique prefix of 6+ characters) from retention cleanup.",
)(click.argument("record_id", metavar="ID")(_pin_command("pin")))
main.command(
    "unpin",
    help="Let retention cleanup delete record ID (or a unique prefix of 6+ characters) "
    "again once it is old enough.",
)(click.argument("record_id", metavar="ID")(_pin_command("unpin")))


@main.command()
@click.option(
    "--target-mb",
    type=click.FloatRange(min=0.001),
    help="Merged file size to aim for (default: retention.toml [compaction], 128).",
)
def compact(target_mb: float | None) -> None:
    """Compact the history tables: each partition's small files merged into few larger ones.

    Delta's own OPTIMIZE, one atomic commit per table, then a vacuum of the replaced files.
    Query results do not change.
    """
    from ideogram_pipeline.lifecycle.compaction import compact as run

    settings, _ = _store()
    target = _config().target_file_mb if target_mb is None else target_mb
    with _errors():
        result = run(settings, target_bytes=int(target * 1024 * 1024))
    click.echo(
        f"files: {result.files_before} -> {result.files_after} "
        f"({_human(result.bytes_before)} -> {_human(result.bytes_after)}), "
        f"{result.partitions_compacted} partitions compacted"
    )
    for name, figures in result.tables.items():
        click.echo(f"  {name}: {figures['files_before']} -> {figures['files_after']} files")


@main.command()
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC, default 29 days ago)."
)
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC, default today).")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the report files to this local folder.",
)
def report(since: datetime | None, until: datetime | None, out: Path | None) -> None:
    """Write a usage and cost report: Markdown with charts, and a CSV of the figures.

    Written under reports/ in the storage root (and to --out). The monthly budget comes
    from IDEOGRAM_MONTHLY_BUDGET_USD or retention.toml's [reports] monthly_budget_usd.
    """
    from ideogram_pipeline.reports.rendering import write_report
    from ideogram_pipeline.reports.usage import build_report

    if since and until and since > until:
        raise click.UsageError("--since is after --until")
    settings, store = _store()
    config = _config()
    with _errors():
        data = build_report(
            settings,
            store,
            since.date() if since else None,
            until.date() if until else None,
            monthly_budget_usd=config.monthly_budget_usd,
        )
        files = write_report(data, store, out)
    t = data.totals
    click.echo(
        f"{data.since} to {data.until}: {t['records']} records, {t['images']} images, "
        f"cost ${t['cost_usd']:.2f}"
    )
    if data.budget and config.monthly_budget_usd is not None:
        last = data.budget[-1]
        used = f" ({last['used_pct']:.1f}%)" if last.get("used_pct") is not None else ""
        click.echo(
            f"budget {last['month']}: ${last['spend_usd']:.2f} of "
            f"${config.monthly_budget_usd:.2f}{used}, projected ${last['projected_usd']:.2f}"
        )
    click.echo(f"report: {store.uri(files.keys[0])}")
    for path in files.local:
        click.echo(f"  {path}")
