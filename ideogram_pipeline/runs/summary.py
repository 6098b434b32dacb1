"""What a run did (:class:`BatchSummary`), how far it is (:class:`Progress`), and the
error that stops a whole batch (:class:`BatchAborted`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ideogram_pipeline.history.schema import GenerationRecord

__all__ = ["BatchAborted", "BatchSummary", "Progress", "ProgressCallback"]

#: Records kept on the summary for a first look (the Dagster UI shows them as a table).
FIRST_RECORDS = 10


@dataclass
class BatchSummary:
    """What a run did, in the terms a person asks about afterwards."""

    batch: str
    run_id: str
    rows: int = 0
    stored: int = 0
    unsafe: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0  # rows already stored/unsafe from an earlier run: not sent, not paid
    unknown: int = 0  # sent before a crash with no answer recorded: possibly billed
    resumed: int = 0  # answered before a crash and finished now without a new request
    linked: int = 0  # rows whose exact request was stored before: linked, not sent (issue 6)
    left: int = 0  # rows not finished because the run was stopped (SIGINT/SIGTERM)
    left_submitted: int = 0  # of those, generations Ideogram accepted: the next run polls
    cost_usd: float = 0.0
    seconds: float = 0.0
    retries: Counter[str] = field(default_factory=Counter)
    #: Versions of ``generations`` this run's metadata flushes committed.
    history_commits: list[int] = field(default_factory=list)
    storage_root: str = ""
    simulated: bool = False
    first_records: list[GenerationRecord] = field(default_factory=list)
    estimated_cost_usd: float | None = None  # what the cost guard priced before sending
    dry_run: bool = False  # estimate only: nothing was sent
    #: Rows a simulator had made, generated again because this run uses the real API.
    simulated_rows_redone: int = 0

    def count(self, record: GenerationRecord) -> None:
        """Count a record written by this run: its status and what it cost."""
        match record.status:
            case "stored":
                self.stored += 1
            case "unsafe":
                self.unsafe += 1
            case "rejected":
                self.rejected += 1
            case "failed":
                self.failed += 1
            case "unknown":
                self.unknown += 1
        self.cost_usd += record.cost_usd or 0.0
        if len(self.first_records) < FIRST_RECORDS:
            self.first_records.append(record)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "run_id": self.run_id,
            "rows": self.rows,
            "stored": self.stored,
            "unsafe": self.unsafe,
            "rejected": self.rejected,
            "failed": self.failed,
            "skipped": self.skipped,
            "unknown": self.unknown,
            "resumed": self.resumed,
            "linked": self.linked,
            "left": self.left,
            "left_submitted": self.left_submitted,
            "cost_usd": round(self.cost_usd, 4),
            "seconds": round(self.seconds, 2),
            "retries": dict(self.retries),
            "storage_root": self.storage_root,
            "simulated": self.simulated,
            "estimated_cost_usd": self.estimated_cost_usd,
            "dry_run": self.dry_run,
            "simulated_rows_redone": self.simulated_rows_redone,
        }


class BatchAborted(Exception):
    """The whole batch had to stop (bad key, no credits); finished rows are kept."""

    def __init__(self, message: str, summary: BatchSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class Progress:
    done_rows: int
    total_rows: int
    summary: BatchSummary


ProgressCallback = Callable[[Progress], None]
