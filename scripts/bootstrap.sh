#!/usr/bin/env bash
# Create .venv and install the project with its test tools, once per change of the
# dependency files. Used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.install-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "installing ideogram-pipeline and its dependencies into .venv ..." >&2
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -c constraints.txt -e '.[test]'; } > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "installation failed; the full log is .venv/install.log" >&2
    exit 1
  fi
  echo "$stamp" > .venv/.install-stamp
fi

# A Dagster instance for this checkout, configured by the repository's dagster.yaml.
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
