#!/usr/bin/env bash
# The test suite: lint, then pytest against real components (simulator, SeaweedFS, DuckDB,
# Dagster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
bash scripts/ensure_chromium.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q "$@"
