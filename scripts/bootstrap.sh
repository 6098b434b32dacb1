#!/usr/bin/env bash
# Create .venv and install the project into it, once per change of the dependency files.
# Sourced with what to install:
#   source scripts/bootstrap.sh product   the product only (scripts/demo.sh)
#   source scripts/bootstrap.sh test      the product and its test tools (scripts/test.sh, .ci/run)
# The test install is a superset: a .venv set up for the tests also serves the demo, and
# the demo never installs a test tool (Playwright, Hypothesis, Celery, SeaweedFS, pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bootstrap_for="${1:-product}"
case "$bootstrap_for" in
  product) bootstrap_spec='.' ;;
  test) bootstrap_spec='.[test]' ;;
  *) echo "scripts/bootstrap.sh: expected 'product' or 'test', got '$bootstrap_for'" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
bootstrap_stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
bootstrap_current() { [ "$(cat ".venv/.install-stamp-$1" 2>/dev/null)" = "$bootstrap_stamp" ]; }
if ! bootstrap_current "$bootstrap_for" && ! bootstrap_current test; then
  echo "installing ideogram-pipeline ($bootstrap_for) and its dependencies into .venv ..." >&2
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -c constraints.txt -e "$bootstrap_spec"; } \
         > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "installation failed; the full log is .venv/install.log" >&2
    exit 1
  fi
  echo "$bootstrap_stamp" > ".venv/.install-stamp-$bootstrap_for"
fi

# A Dagster instance for this checkout, configured by the repository's dagster.yaml.
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
