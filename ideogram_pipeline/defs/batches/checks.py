"""The batch asset's own checks, evaluated with each materialization (``check_specs``).

Cheap and about the partition just written, so they run in the same step (the way
dagster-open-platform's download assets return theirs); history-wide checks are
``@asset_check``s on ``generation_history`` (``defs/lifecycle/checks.py``).
"""

import dagster as dg

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["BATCH_CHECK_SPECS", "checksum_check", "rows_check"]

ASSET = "batch_images"
#: Images the checksum check reads back at most: every image of the run up to this many, a
#: random sample of this many beyond (on S3 each one is a GET of the whole object).
CHECKSUM_SAMPLE = 500
ROWS_CHECK = "rows_accounted_for"
CHECKSUM_CHECK = "stored_checksums_match"

BATCH_CHECK_SPECS = [
    dg.AssetCheckSpec(
        ROWS_CHECK,
        asset=ASSET,
        description="Every row of the batch file has at least one record in the history "
        "(stored, unsafe, rejected, failed or unknown): nothing vanished.",
    ),
    dg.AssetCheckSpec(
        CHECKSUM_CHECK,
        asset=ASSET,
        description="The images this run stored read back with the sha256 recorded for "
        f"them (every one, or a random {CHECKSUM_SAMPLE} when the run stored more).",
    ),
]


def _not_run(check_name: str, exc: Exception) -> dg.AssetCheckResult:
    """A check that could not read what it checks has failed, and says why."""
    return dg.AssetCheckResult(
        asset_key=ASSET,
        check_name=check_name,
        passed=False,
        metadata={"error": f"{type(exc).__name__}: {exc}"},
    )


def rows_check(
    settings: Settings, store: ObjectStore, batch: str, rows: list[int]
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history.batch_audit import missing_rows

    try:
        missing = missing_rows(settings, store, batch, rows)
    except Exception as exc:
        return _not_run(ROWS_CHECK, exc)
    return dg.AssetCheckResult(
        asset_key=ASSET,
        check_name=ROWS_CHECK,
        passed=not missing,
        metadata={
            "rows": len(rows),
            "rows_without_record": len(missing),
            "examples": dg.MetadataValue.json(missing[:20]),
        },
    )


def checksum_check(
    settings: Settings, store: ObjectStore, batch: str, run_id: str
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history.batch_audit import verify_run_checksums

    try:
        report = verify_run_checksums(settings, store, batch, run_id, sample=CHECKSUM_SAMPLE)
    except Exception as exc:
        return _not_run(CHECKSUM_CHECK, exc)
    return dg.AssetCheckResult(
        asset_key=ASSET,
        check_name=CHECKSUM_CHECK,
        passed=report.passed,
        metadata={
            "stored_by_run": report.total,
            "checked": report.checked,
            "sampled": report.checked < report.total,
            "mismatched": dg.MetadataValue.json(report.mismatched[:20]),
            "unreadable": dg.MetadataValue.json(report.unreadable[:20]),
        },
    )
