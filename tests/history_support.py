"""Helpers for the history-feature tests: real batches through the engine into a root.

Nothing is faked: batches run through :func:`ideogram_pipeline.runs.runner.execute_batch`
against the bundled simulator on loopback, into a local folder or a SeaweedFS bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.runs.engine import BatchSummary
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator
from ideogram_pipeline.storage import ObjectStore, open_store
from tests.conftest import new_bucket


@dataclass
class Root:
    """A storage root with the environment that reaches it and the simulator."""

    settings: Settings
    env: dict[str, str]
    store: ObjectStore
    kind: str

    def run(self, key: str, csv_text: str, **options: Any) -> BatchSummary:
        batch = parse_batch(csv_text.encode("utf-8"), source=f"{key}.csv", key=key)
        return execute_batch(batch, self.settings, store=self.store, **options)

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        con = history.connect(self.settings, self.store)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def records(self, where: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        con = history.connect(self.settings, self.store)
        try:
            cursor = con.execute(f"SELECT * FROM generation_records WHERE {where}", params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            con.close()


def make_root(
    kind: str,
    simulator: Simulator,
    request: pytest.FixtureRequest | None,
    folder: Path,
    extra: Mapping[str, str] | None = None,
) -> Root:
    """A fresh root of ``kind`` ("local" or "s3") whose API is ``simulator``."""
    env = {
        "IDEOGRAM_API_KEY": simulator.api_key,
        "IDEOGRAM_BASE_URL": simulator.base_url,
        "IDEOGRAM_MAX_INFLIGHT": "8",
        **(extra or {}),
    }
    if kind == "s3":
        assert request is not None, "an S3 root needs the test's request for s3_server"
        server = request.getfixturevalue("s3_server")
        env.update(server.env())
        env["IDEOGRAM_STORAGE"] = f"s3://{new_bucket(server)}/history"
    else:
        env["IDEOGRAM_STORAGE"] = str(folder)
    settings = load_settings(env)
    return Root(settings, env, open_store(settings), kind)
