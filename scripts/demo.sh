#!/usr/bin/env bash
# The demo: one sample batch through Dagster on embedded defaults (bundled simulator,
# ./data storage, SQLite Dagster instance in ./.dagster). Extra arguments go to `demo`.
# Installs the product only, none of the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh product
exec .venv/bin/ideogram-pipeline demo "$@"
