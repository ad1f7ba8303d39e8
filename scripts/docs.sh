#!/usr/bin/env bash
# Build the documentation site into site/ (git-ignored), strictly: any warning fails the build.
#
#   bash scripts/docs.sh            # runs every tutorial of docs/tutorials and captures its output
#   bash scripts/docs.sh serve      # live preview on http://127.0.0.1:8000
#   ASG_DOCS_TUTORIALS=0 bash scripts/docs.sh   # quick build without running the tutorials
#
# Needs mkdocs, mkdocs-material and mkdocstrings-python in .venv (the root dev group).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-$root/.venv/bin/python}
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = serve ]; then
    shift
    exec "$py" -m mkdocs serve --strict "$@"
fi
exec "$py" -m mkdocs build --strict --clean --site-dir site "$@"
