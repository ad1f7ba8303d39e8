#!/usr/bin/env bash
# Set up and run ASG's main job on a fresh machine that has Python 3.11+ and pip:
#
#   bash scripts/train.sh [arguments for examples/train_digits.py, e.g. --epochs 20]
#
# Creates .venv (if missing), installs asg-core and asg-data into it (editable, from this checkout),
# then trains a small MLP on the UCI handwritten digits bundled with asg-data, printing per-epoch
# progress and the final test accuracy. Works offline once the venv exists.
# Environment: PYTHON (interpreter for the venv, default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=$PWD/.venv
py=$venv/bin/python

if [ ! -x "$py" ]; then
    base=${PYTHON:-python3}
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: ASG needs Python 3.11 or newer; '$base' is $("$base" --version 2>&1 || echo missing)." >&2
        echo "       Set PYTHON=/path/to/python3.11 and run again." >&2
        exit 1
    fi
    echo "==> creating .venv with $("$base" --version)"
    "$base" -m venv "$venv"
fi

# Install (or refresh) the two packages the example needs; skipped when their metadata has not changed.
stamp=$venv/.asg-train-stamp
want=$(cat packages/asg-core/pyproject.toml packages/asg-data/pyproject.toml | cksum)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c 'import asg.core, asg.data' 2>/dev/null; then
    echo "==> installing asg-core and asg-data into .venv"
    "$py" -m pip install --quiet --disable-pip-version-check -e packages/asg-core -e packages/asg-data
    printf '%s' "$want" >"$stamp"
fi

echo "==> python examples/train_digits.py $*"
exec "$py" examples/train_digits.py "$@"
