"""What retention, the orphan sweep, compaction and reports share: the policy, the config, audits.

The policy lives in one place, ``retention.toml`` (the repository root, or the file named by
``IDEOGRAM_RETENTION``)::

    [retention]
    default_days = 30          # records older than this go
    keep_tags = ["keep"]       # records with any of these tags never go
    [retention.tags]
    draft = 7                  # per-tag overrides; the longest matching one wins
    [orphans]
    grace_hours = 24           # objects younger than this are never orphans (batches in flight)
    [compaction]
    target_file_mb = 128
    [reports]
    monthly_budget_usd = 500   # IDEOGRAM_MONTHLY_BUDGET_USD overrides it

The schedules' times are not here: Dagster needs them when the code location loads, which
reads no file (``defs/lifecycle/schedules.py``: defaults, and ``IDEOGRAM_*_CRON``).

No lock and no manifest: every change to the history is one Delta commit (atomic, and
retried on a conflict with a concurrent writer), so a cleanup or compaction killed at any
moment leaves the tables as they were before or after that commit, and the next run picks
up what is left from the tables themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.storage import LocalStore, ObjectStore

__all__ = [
    "VACUUM_RETENTION_HOURS",
    "LifecycleConfig",
    "LifecycleError",
    "RetentionPolicy",
    "get_json",
    "load_lifecycle_config",
    "parse_as_of",
    "prune_empty_dirs",
    "put_json",
    "utc_stamp",
]

DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_KEEP_TAGS = ("keep",)
DEFAULT_GRACE_HOURS = 24.0
DEFAULT_TARGET_FILE_MB = 128.0
#: How long a data file replaced by a DELETE or OPTIMIZE stays before vacuum removes it.
#: A reader (a query, a batch run checking its rows) works on the version it started
#: with; removing that version's files under it makes the read fail, which happened in
#: the concurrency tests with 0. One hour (Delta counts whole hours) is far longer than
#: any read here; the next day's cleanup or compaction removes the files.
VACUUM_RETENTION_HOURS = 1


class LifecycleError(Exception):
    """A lifecycle job cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long records live. ``days_for(tags)`` is ``None`` for records kept forever."""

    default_days: float = DEFAULT_RETENTION_DAYS
    tag_days: Mapping[str, float] = field(default_factory=dict)
    keep_tags: tuple[str, ...] = DEFAULT_KEEP_TAGS

    def days_for(self, tags: list[str] | tuple[str, ...] | None) -> float | None:
        """The retention of a record with ``tags``: keep tags win, then the longest override.

        The longest override wins so that adding a tag can never shorten a record's life by
        surprise (a ``draft`` that is also ``campaign: 90`` stays 90 days).
        """
        tags = tags or ()
        if any(tag in self.keep_tags for tag in tags):
            return None
        overrides = [self.tag_days[tag] for tag in tags if tag in self.tag_days]
        return max(overrides) if overrides else self.default_days

    def with_default(self, days: float | None) -> RetentionPolicy:
        if days is None:
            return self
        return RetentionPolicy(float(days), dict(self.tag_days), self.keep_tags)

    def describe(self) -> str:
        parts = [f"default {self.default_days:g} days"]
        parts += [f"{tag} {days:g} days" for tag, days in sorted(self.tag_days.items())]
        parts.append("kept forever: tags " + ", ".join(self.keep_tags) + " and pinned ids")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "default_days": self.default_days,
            "tag_days": dict(sorted(self.tag_days.items())),
            "keep_tags": list(self.keep_tags),
        }


@dataclass(frozen=True)
class LifecycleConfig:
    """Everything the lifecycle jobs read from ``retention.toml`` and the environment."""

    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    grace_hours: float = DEFAULT_GRACE_HOURS
    target_file_mb: float = DEFAULT_TARGET_FILE_MB
    monthly_budget_usd: float | None = None
    source: str = "built-in defaults"


def _number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise LifecycleError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise LifecycleError(f"{name} must be a number, got {value!r}") from None
    if number < minimum or number != number:
        raise LifecycleError(f"{name} must be at least {minimum:g}, got {value!r}")
    return number


def _config_path(env: Mapping[str, str]) -> Path | None:
    named = env.get("IDEOGRAM_RETENTION", "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise LifecycleError(f"IDEOGRAM_RETENTION={named} is not a file")
        return path
    default = Path("retention.toml")
    return default if default.is_file() else None


def load_lifecycle_config(
    environ: Mapping[str, str] | None = None, path: str | os.PathLike[str] | None = None
) -> LifecycleConfig:
    """Read ``retention.toml`` (or ``path``) and the environment overrides, validated."""
    env = os.environ if environ is None else environ
    file = Path(path) if path is not None else _config_path(env)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LifecycleError(f"cannot read retention config {file}: {exc}") from None
    if "schedules" in data:
        # Loading Dagster's definitions reads no file, so the times moved to the environment;
        # ignoring the section would move a user's cleanup to another hour without a word.
        raise LifecycleError(
            f"{file}: [schedules] is no longer read; set IDEOGRAM_CLEANUP_CRON, "
            "IDEOGRAM_COMPACTION_CRON or IDEOGRAM_REPORT_CRON instead and remove the section"
        )
    section = data.get("retention", {})
    tags = section.get("tags", {})
    if not isinstance(tags, dict):
        raise LifecycleError("[retention.tags] must map tag names to days")
    keep = section.get("keep_tags", list(DEFAULT_KEEP_TAGS))
    if not isinstance(keep, list) or not all(isinstance(tag, str) for tag in keep):
        raise LifecycleError("retention.keep_tags must be a list of tag names")
    policy = RetentionPolicy(
        default_days=_number(
            section.get("default_days", DEFAULT_RETENTION_DAYS), "retention.default_days"
        ),
        tag_days={str(k): _number(v, f"retention.tags.{k}") for k, v in tags.items()},
        keep_tags=tuple(keep),
    )
    budget = env.get("IDEOGRAM_MONTHLY_BUDGET_USD", "").strip() or data.get("reports", {}).get(
        "monthly_budget_usd"
    )
    return LifecycleConfig(
        retention=policy,
        grace_hours=_number(
            data.get("orphans", {}).get("grace_hours", DEFAULT_GRACE_HOURS), "orphans.grace_hours"
        ),
        target_file_mb=_number(
            data.get("compaction", {}).get("target_file_mb", DEFAULT_TARGET_FILE_MB),
            "compaction.target_file_mb",
            minimum=0.001,
        ),
        monthly_budget_usd=None if budget in (None, "") else _number(budget, "monthly budget"),
        source=str(file) if file is not None else "built-in defaults",
    )


def parse_as_of(value: str | date | datetime | None) -> datetime:
    """``now`` when empty; a date means midnight UTC at its start; naive times are UTC."""
    if value is None or value == "":
        return datetime.now(UTC)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise LifecycleError(
                f"--as-of must be a date (2025-01-31) or an ISO time, got {value!r}"
            ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def put_json(store: ObjectStore, key: str, value: Any, *, create_only: bool = False) -> None:
    """``value`` as an indented JSON object (audit records are read by people too)."""
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
    store.put_bytes(key, data, content_type="application/json", create_only=create_only)


def get_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def prune_empty_dirs(store: ObjectStore, prefix: str) -> None:
    """Remove folders left empty by deletions (local roots only; S3 has no folders)."""
    if not isinstance(store, LocalStore):
        return
    base = store.path / prefix
    if not base.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda item: -len(item[0])):
        path = Path(dirpath)
        if path != base:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when empty


def utc_stamp(moment: datetime | None = None) -> str:
    """A sortable, path-safe timestamp: ``20250131T120000Z``."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
