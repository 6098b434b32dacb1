"""A plain description of the code location's definitions, compared with a stored snapshot.

What it records is what a user or a script relies on: asset keys (group, kinds, upstream
keys, partitions, pools), asset checks, jobs with their nodes and the config fields each
node takes (the launchpad's run config), schedules with their crons, sensors, and resource
keys. Volatile parts (descriptions, code versions, metadata) are left out, so a wording
change does not fail it; a renamed job or a moved cron does.

Run ``python -m tests.definitions_snapshot --update`` from the repository root to rewrite
``tests/snapshots/definitions.json`` after a deliberate change, and say why in the commit.
The test loads the definitions in a fresh interpreter with no ``IDEOGRAM_*`` variables, so
the snapshot holds the defaults.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"


def _config_fields(node_def: Any) -> list[str]:
    schema = getattr(node_def, "config_schema", None)
    config_type = schema.config_type if schema is not None else None
    fields = getattr(config_type, "fields", None) or {}
    return sorted(fields)


def describe() -> dict[str, Any]:
    """The definitions of ``ideogram_pipeline.definitions`` as sorted, JSON-ready data."""
    from ideogram_pipeline.definitions import defs

    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitions": getattr(partitions, "name", None) if partitions else None,
            "pools": sorted(node.pools or []),
        }
    checks = sorted(
        f"{check.asset_key.to_user_string()}:{check.name}" for check in graph.asset_check_keys
    )
    jobs: dict[str, Any] = {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue  # Dagster's implicit asset job
        jobs[job.name] = {
            "partitions": getattr(job.partitions_def, "name", None) if job.partitions_def else None,
            "nodes": {
                node.name: _config_fields(node.definition)
                for node in sorted(job.graph.nodes, key=lambda n: n.name)
            },
        }
    schedules = {
        schedule.name: {
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "job": schedule.job_name,
            "default_status": schedule.default_status.value,
        }
        for schedule in sorted(repo.schedule_defs, key=lambda s: s.name)
    }
    sensors = {
        sensor.name: {
            "job": sensor.job_name,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "default_status": sensor.default_status.value,
        }
        for sensor in sorted(repo.sensor_defs, key=lambda s: s.name)
    }
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "resources": sorted(repo.get_top_level_resources()),
    }


def render(description: dict[str, Any]) -> str:
    return json.dumps(description, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render(describe())
    if "--update" in sys.argv[1:]:
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text, encoding="utf-8")
        print(f"wrote {SNAPSHOT}")
    else:
        sys.stdout.write(text)
