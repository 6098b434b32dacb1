#!/usr/bin/env bash
# The test suite: lint, the type check (mypy --strict over the package), then pytest against
# real components (simulator, SeaweedFS, DuckDB, Dagster, PostgreSQL, RabbitMQ, Chromium).
# Extra arguments go to pytest: `-m "not slow"` is the fast lane for the inner loop.
# With CI set, a deployment test whose service is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh test
bash scripts/ensure_chromium.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
