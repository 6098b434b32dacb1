"""The records a run writes, built in one place, and which earlier records make a row's
work unnecessary."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.history.row_keys import row_identity, row_key
from ideogram_pipeline.history.schema import GenerationRecord, RowState
from ideogram_pipeline.ideogram.generation import (
    CONTROL_SETTINGS,
    GenerationRequest,
    RejectedRow,
    Status,
)
from ideogram_pipeline.ideogram.operations import operation

__all__ = ["ExtraFields", "RecordMaker", "already_done", "state_for_run"]

#: Further columns for the records of ``(row, image_index)``, e.g. ``reproduced_from``.
ExtraFields = Mapping[tuple[int, int], Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class RecordMaker:
    """Builds the run's :class:`GenerationRecord` s: the run's columns, the row's request
    columns, then the outcome's."""

    batch_key: str
    source: str
    run_id: str
    simulated: bool
    #: Records that belong to no request attempt (rejections, links) share this one.
    run_attempt: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    extra_fields: ExtraFields = field(default_factory=dict)
    #: Line -> row key of the batch's file (``history/row_keys.py``).
    row_keys: Mapping[int, str] = field(default_factory=dict)

    def key_of(self, row: GenerationRequest | RejectedRow) -> str:
        """The row's key in its file (a row the maker was not told of: its first occurrence)."""
        return self.row_keys.get(row.row) or row_key(row_identity(row), 0)

    def record(
        self,
        row: GenerationRequest | RejectedRow,
        status: Status,
        index: int = 0,
        attempt_id: str | None = None,
        **outcome: Any,
    ) -> GenerationRecord:
        """The record of image ``index`` of ``row``; ``outcome`` names further columns (a
        name that is not a column raises ``TypeError`` here)."""
        created = datetime.now(UTC)
        attempt_id = attempt_id or self.run_attempt
        # Ids (and so image keys) follow from the row's key and the attempt: an attempt
        # finished by a later run after a crash (even with the row on another line) writes
        # the same ids and keys, never a duplicate or an orphan.
        key = self.key_of(row)
        identity = f"{self.batch_key}|{key}|{attempt_id}|{index}"
        columns: dict[str, Any] = {
            "id": hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32],
            "attempt_id": attempt_id,
            "row": row.row,
            "image_index": index,
            "prompt": row.prompt,
            "tags": tuple(row.tags),
            "created_at": created,
            "date": created.date(),
            "batch": self.batch_key,
            "run_id": self.run_id,
            "run_started_at": self.started,
            "cost_usd": 0.0,
            "attempts": 0,
            "batch_name": Path(self.source).name,
            "source_file": self.source,
            "simulated": self.simulated,
            "row_key": key,
            "in_file": True,
        }
        columns.update(self.extra_fields.get((row.row, index), {}))
        if isinstance(row, GenerationRequest):
            columns.update(
                # Upscale, describe, remove-background name no model of ours.
                model=row.model if _runs_a_model(row) else None,
                operation=row.operation,
                derived_from=row.source.record_id if row.source is not None else None,
                negative_prompt=row.negative_prompt,
                style_type=row.style_type,
                aspect_ratio=row.aspect_ratio,
                resolution=row.resolution,
                rendering_speed=row.rendering_speed,
                magic_prompt=row.magic_prompt,
                requested_seed=row.seed,
                seed=row.seed,
                num_images=row.num_images,
                request_hash=row.request_hash(),
                **{name: getattr(row, name) for name in CONTROL_SETTINGS},
                reference_sha256s=_reference_column(row, "sha256"),
                reference_roles=_reference_column(row, "role"),
            )
        columns.update(outcome)
        return GenerationRecord(status=status, **columns)


def state_for_run(
    previous: Mapping[int, RowState], *, simulated: bool
) -> tuple[dict[int, RowState], list[int]]:
    """The recorded state a run goes by, and the rows it treats as not done because a
    simulator made them.

    A simulated image is never a real one: for a run against the real API (``simulated``
    false), a row whose records came from a simulator keeps only its attempt (so the new
    records replace all of the old ones) and no outcome, so :func:`already_done` (and the
    estimate) sees it as new work and it is generated for real. A simulated run keeps
    everything (real images are done for it too).
    """
    if simulated:
        return dict(previous), []
    replaced = sorted(
        row
        for row, state in previous.items()
        if state.simulated and state.statuses & {"stored", "unsafe"}
    )
    forgotten = {
        row: RowState(None, frozenset(), None, state.attempt_id, frozenset(), simulated=True)
        for row, state in previous.items()
        if state.simulated
    }
    return {**previous, **forgotten}, replaced


def already_done(row: GenerationRequest | RejectedRow, previous: Mapping[int, RowState]) -> bool:
    """Whether ``row`` needs no new work: the same request already ``stored`` or ``unsafe``
    (paid for), or the same rejection already recorded. The cost estimate uses it too.

    ``previous`` is the state :func:`state_for_run` gives the run: for a run against the
    real API, rows a simulator made carry no outcome in it, so they are never done."""
    before = previous.get(row.row)
    if before is None:
        return False
    if isinstance(row, RejectedRow):
        return before.statuses == {"rejected"} and before.error == row.error
    # Every image of the attempt must be recorded: a crash can record some of them only.
    return (
        before.request_hash == row.request_hash()
        and bool(before.statuses & {"stored", "unsafe"})
        and len(before.indexes or (0,)) >= row.num_images
    )


def _runs_a_model(request: GenerationRequest) -> bool:
    """Whether the request runs one of the models (a generation, or a 3.0 operation)."""
    return not request.is_operation or operation(request.operation).flat_price_usd is None


def _reference_column(request: GenerationRequest, attribute: str) -> tuple[str, ...] | None:
    """One attribute of each of the request's reference images, in order (None: none)."""
    if not request.references:
        return None
    return tuple(str(getattr(image, attribute)) for image in request.references)
