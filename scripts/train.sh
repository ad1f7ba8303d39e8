#!/usr/bin/env bash
# Set up and run ASG's main job on a fresh machine that has Python 3.11+ and pip:
#
#   bash scripts/train.sh [extra arguments for the digits run, e.g. --epochs 20]
#
# Creates .venv (if missing), installs asg-core, asg-nn, asg-data and asg-zoo into it (editable, from
# this checkout), then with the `asg-zoo` command line
#   1. trains LeNet-5 on the UCI handwritten digits bundled with asg-data (a few seconds on a 2-core CPU),
#      ending with "test accuracy: 97.78%";
#   2. trains a tiny character-level GPT on the bundled Shakespeare text and prints a generated sample.
# Checkpoints go to runs/. Works offline once the venv exists.
# Environment: PYTHON (interpreter for the venv, default python3); GPT_STEPS (default 300).
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

# Install (or refresh) the packages the job needs; skipped when their metadata has not changed.
pkgs=(asg-core asg-nn asg-data asg-zoo)
stamp=$venv/.asg-train-stamp
want=$(for p in "${pkgs[@]}"; do cat "packages/$p/pyproject.toml"; done | cksum)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c 'import asg.core, asg.nn, asg.data, asg.zoo' 2>/dev/null; then
    echo "==> installing ${pkgs[*]} into .venv"
    args=()
    for p in "${pkgs[@]}"; do args+=(-e "packages/$p"); done
    "$py" -m pip install --quiet --disable-pip-version-check "${args[@]}"
    printf '%s' "$want" >"$stamp"
fi
zoo=$venv/bin/asg-zoo

echo "==> asg-zoo train lenet5 --dataset digits --epochs 15 --out runs/digits-lenet5 $*"
"$zoo" train lenet5 --dataset digits --epochs 15 --out runs/digits-lenet5 "$@"

echo
echo "==> asg-zoo train gpt --dataset shakespeare --steps ${GPT_STEPS:-300} --out runs/shakespeare-gpt"
exec "$zoo" train gpt --dataset shakespeare --steps "${GPT_STEPS:-300}" --block-size 64 --batch-size 32 \
    --lr 6e-3 --out runs/shakespeare-gpt --max-new-tokens 300
