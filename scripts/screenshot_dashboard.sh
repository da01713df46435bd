#!/usr/bin/env bash
# Screenshot optuna-dashboard's page of an experiment's study in headless Chromium: proof that
# `carsweep dashboard` serves the study, for docs/.
#
#   scripts/screenshot_dashboard.sh demo/results/demo docs/dashboard-screenshot.png
#
# Starts `carsweep dashboard EXPERIMENT` on 127.0.0.1 (port $PORT, default 8765; no
# TensorBoard), waits until it answers, lets Chromium run the page's scripts for a while
# (--virtual-time-budget), saves the picture and stops the dashboard. CARSWEEP names the
# command (default: carsweep on PATH, e.g. CARSWEEP=.venv/bin/carsweep). Needs Debian's
# chromium package (apt-get install -y chromium).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 EXPERIMENT OUT.png" >&2
    exit 2
fi
experiment=$1
out=$(realpath -m "$2")
port=${PORT:-8765}
[[ -f "$experiment/study.journal" ]] || { echo "$0: no study.journal in $experiment" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || true)
[[ -n "$browser" ]] || { echo "$0: chromium not found (apt-get install -y chromium)" >&2; exit 2; }

"${CARSWEEP:-carsweep}" dashboard "$experiment" --port "$port" --tensorboard-port 0 >/dev/null &
server=$!
trap 'kill -INT "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "$0: carsweep dashboard exited" >&2; exit 1; }
    sleep 0.5
done

# --no-sandbox: containers usually run as root, where Chromium's sandbox refuses to start.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="${WINDOW:-1400,1100}" --virtual-time-budget=20000 \
    --screenshot="$out" "http://127.0.0.1:$port/dashboard/studies/0" 2>/dev/null
[[ -s "$out" ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "screenshot: $out"
