#!/usr/bin/env bash
# The demo: one sample batch through Dagster on embedded defaults (bundled simulator,
# ./data storage, SQLite Dagster instance in ./.dagster). Extra arguments go to `demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/ideogram-pipeline demo "$@"
