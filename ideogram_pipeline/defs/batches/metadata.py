"""What the UI shows for a batch partition: where the batch stands, and what this run did.

Two sets of keys side by side. ``batch_*`` are the batch's totals from the history over
every run so far; ``run_*`` count what this run did. A re-run of a finished batch of nine
images therefore shows ``batch_stored`` 9 beside ``run_stored`` 0 and ``run_cost_usd`` 0,
instead of a bare "stored 0" that reads as if the batch had lost its images.
"""

from typing import TYPE_CHECKING, Any

import dagster as dg

from ideogram_pipeline.safe_output import escape_markdown_cell

if TYPE_CHECKING:
    from ideogram_pipeline.history.batch_audit import BatchTotals
    from ideogram_pipeline.runs.engine import BatchSummary

__all__ = ["RUN_PREFIX", "batch_totals_metadata", "public_url_metadata", "run_metadata"]

#: Prefix of this run's counts (the CLI prints them without it).
RUN_PREFIX = "run_"

#: Dagster's metadata values are many types (``RawMetadataValue``, not exported).
MetadataDict = dict[str, Any]


#: Public URLs listed in the metadata (a sample: the history holds every one).
PUBLIC_URL_SAMPLE = 5


def _first_rows_markdown(summary: "BatchSummary") -> str:
    public = any(record.public_url for record in summary.first_records)
    header = "| row | status | model | seed | prompt | stored |" + (" public |" if public else "")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for record in summary.first_records:
        prompt = escape_markdown_cell(record.prompt, limit=80)
        line = (
            f"| {record.row} | {record.status} | {record.model or ''} | "
            f"{record.seed or ''} | {prompt} | {record.stored_uri or ''} |"
        )
        lines.append(line + (f" {record.public_url or ''} |" if public else ""))
    return "\n".join(lines)


def public_url_metadata(summary: "BatchSummary") -> MetadataDict:
    """With ``IDEOGRAM_PUBLIC_BASE_URL`` set: a few of this run's public URLs (the first a
    clickable link). Unset, nothing: no key implies that anything is public."""
    urls = [r.public_url for r in summary.first_records if r.public_url][:PUBLIC_URL_SAMPLE]
    if not urls:
        return {}
    return {
        "public_url_first": dg.MetadataValue.url(urls[0]),
        "public_url_sample": dg.MetadataValue.json(urls),
    }


def batch_totals_metadata(totals: "BatchTotals") -> MetadataDict:
    """The batch as the history holds it now, whichever runs made it so."""
    return {
        "batch_rows_recorded": totals.rows,
        "batch_stored": totals.stored,
        "batch_unsafe": totals.unsafe,
        "batch_rejected": totals.rejected,
        "batch_failed": totals.failed,
        # A request left and no answer was recorded: maybe billed, never resent unasked.
        "batch_unknown_possibly_billed": totals.unknown,
        "batch_cost_usd": dg.MetadataValue.float(round(totals.cost_usd, 4)),
    }


def run_metadata(summary: "BatchSummary") -> MetadataDict:
    """What this run did: rows it sent and how they ended, what it paid, how long it took."""
    run = RUN_PREFIX
    return {
        "mode": "SIMULATED (bundled simulator)" if summary.simulated else "Ideogram API",
        "rows": summary.rows,
        f"{run}stored": summary.stored,
        f"{run}unsafe": summary.unsafe,
        f"{run}rejected": summary.rejected,
        f"{run}failed": summary.failed,
        f"{run}unknown_possibly_billed": summary.unknown,
        f"{run}cost_usd": dg.MetadataValue.float(round(summary.cost_usd, 4)),
        "skipped_already_done": summary.skipped,
        "simulated_rows_redone": summary.simulated_rows_redone,
        "linked_duplicates": summary.linked,
        "seconds": dg.MetadataValue.float(round(summary.seconds, 2)),
        "retries": dg.MetadataValue.json(dict(summary.retries)),
        "storage_root": dg.MetadataValue.path(summary.storage_root),
        "history_commits": len(summary.history_commits),
        "first_rows": dg.MetadataValue.md(_first_rows_markdown(summary)),
        **public_url_metadata(summary),
        **(
            {
                "estimated_cost_usd": dg.MetadataValue.float(
                    float(round(summary.estimated_cost_usd, 4))
                )
            }
            if summary.estimated_cost_usd is not None
            else {}
        ),
    }
