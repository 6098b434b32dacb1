"""Identical seeded rows of one file are paid once: the repeats wait and are linked.

A request with an explicit seed is deterministic, so two identical such rows in one batch
would be two payments for byte-identical images. Across batches (and runs) the engine
links a row to images already stored (``history/duplicates.py``); within one run the first
row of a kind is sent and the later identical ones wait for it, then get linked records
pointing at its images, exactly like a cross-batch duplicate (``duplicate_of``, cost 0).

A repeat whose first row stored no complete set of images (it failed, was unsafe, or the
run stopped first) is sent after all, once the first has had its chance; a stopping run
leaves it for the next run.
"""

from __future__ import annotations

from typing import Any

from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.ideogram.generation import GenerationRequest

__all__ = ["Repeats"]


class Repeats:
    """The first row of each seeded request in a run, the repeats waiting for it, and the
    images it stored."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}  # request hash -> line of the row sent
        self.waiting: list[GenerationRequest] = []
        self.images: dict[str, dict[int, GenerationRecord]] = {}

    def defer(self, row: GenerationRequest) -> bool:
        """Whether ``row`` repeats a seeded row already being sent (it then waits)."""
        if row.seed is None:
            return False
        request_hash = row.request_hash()
        if request_hash not in self.first:
            self.first[request_hash] = row.row
            return False
        self.waiting.append(row)
        return True

    def seen(self, record: GenerationRecord) -> None:
        """Note an image the first row of a kind stored."""
        request_hash = record.request_hash
        if (
            record.status == "stored"
            and request_hash is not None
            and self.first.get(request_hash) == record.row
            and record.image_key is not None
        ):
            self.images.setdefault(request_hash, {})[record.image_index] = record

    def originals(self, row: GenerationRequest) -> list[dict[str, Any]] | None:
        """The first row's images for a repeat to link to; None unless all were stored."""
        stored = self.images.get(row.request_hash(), {})
        if any(index not in stored for index in range(row.num_images)):
            return None
        return [stored[index].as_row() for index in range(row.num_images)]

    def take(self) -> list[GenerationRequest]:
        """The waiting repeats (each taken once)."""
        waiting, self.waiting = self.waiting, []
        return waiting
