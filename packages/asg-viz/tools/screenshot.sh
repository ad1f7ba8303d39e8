#!/usr/bin/env bash
# Screenshot of the real asg-viz window under a virtual X screen (Debian: apt-get install -y xvfb).
#
#   bash packages/asg-viz/tools/screenshot.sh [OUT.png]   (default: packages/asg-viz/docs/screenshot.png)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$here/../docs/screenshot.png}
py=${PYTHON:-$root/.venv/bin/python}
command -v Xvfb >/dev/null || { echo "screenshot.sh: Xvfb not found (apt-get install -y xvfb)" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
display=:${ASG_VIZ_DISPLAY:-97}
Xvfb "$display" -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
trap 'kill "$xvfb" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.1; done
DISPLAY=$display QT_QPA_PLATFORM=xcb "$py" "$here/screenshot.py" "$out"
