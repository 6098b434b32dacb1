"""Pins: records that retention never deletes, recorded as an append-only log.

``ideogram-pipeline pin ID`` and ``unpin ID`` each add one event file under
``metadata/pins/`` (JSON lines: ``{"event", "id", "action", "at", "by"}``); nothing is ever
edited in place, so two people pinning at once cannot overwrite each other and the log
says who pinned what and when. A record is pinned when its latest event is a pin.
Compaction may merge event files; events carry their own id, so a merge that is caught
half-way (old and new files both visible) counts every event once.

The ``keep`` tag (``[retention] keep_tags``) protects a record too; pins exist for records
whose tags a person does not want to change.
"""

from __future__ import annotations

import getpass
import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from ideogram_pipeline.storage import ObjectStore

__all__ = ["PINS_PREFIX", "PinEvent", "pin_events", "pinned_ids", "record_pin"]

PINS_PREFIX = "metadata/pins"


@dataclass(frozen=True)
class PinEvent:
    event: str
    id: str
    action: Literal["pin", "unpin"]
    at: str  # ISO UTC; sorts chronologically
    by: str = ""

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def parse_events(data: bytes) -> list[PinEvent]:
    events = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            events.append(
                PinEvent(item["event"], item["id"], item["action"], item["at"], item.get("by", ""))
            )
    return events


def pin_events(store: ObjectStore) -> list[PinEvent]:
    """Every pin event once, oldest first."""
    seen: dict[str, PinEvent] = {}
    for info in store.list(PINS_PREFIX + "/"):
        if info.key.endswith(".jsonl"):
            for event in parse_events(store.get_bytes(info.key)):
                seen.setdefault(event.event, event)
    return sorted(seen.values(), key=lambda e: (e.at, e.event))


def pinned_ids(store: ObjectStore, events: Iterable[PinEvent] | None = None) -> set[str]:
    state: dict[str, bool] = {}
    for event in pin_events(store) if events is None else events:
        state[event.id] = event.action == "pin"
    return {record_id for record_id, pinned in state.items() if pinned}


def record_pin(store: ObjectStore, record_id: str, action: Literal["pin", "unpin"]) -> PinEvent:
    """Append one event; returns it. The caller checks that ``record_id`` exists."""
    now = datetime.now(UTC)
    event = PinEvent(uuid.uuid4().hex, record_id, action, now.isoformat(), _who())
    key = f"{PINS_PREFIX}/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{event.event[:8]}.jsonl"
    store.put_bytes(
        key, (event.as_json() + "\n").encode("utf-8"), content_type="application/x-ndjson"
    )
    return event


def write_merged(store: ObjectStore, key: str, events: Iterable[PinEvent]) -> None:
    """One file holding ``events`` (used by compaction)."""
    body = "".join(event.as_json() + "\n" for event in events)
    store.put_bytes(key, body.encode("utf-8"), content_type="application/x-ndjson")
