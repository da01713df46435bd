#!/usr/bin/env bash
# Screenshot an analysis report in headless Chromium: proof that report.html opens from disk,
# with no server and nothing fetched, and shows the confusion matrix and the gallery.
#
#   scripts/screenshot_report.sh results/demo/analysis/report.html docs/report-screenshot.png
#
# Needs Debian's chromium package (apt-get install -y chromium). The page is tall; the default
# window (1280 x 3000) shows the headline numbers, the confusion matrices and the start of the
# gallery. Set WINDOW=1280,6000 to see more.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png" >&2
    exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
[[ -f "$report" ]] || { echo "$0: no such report: $1" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || true)
[[ -n "$browser" ]] || { echo "$0: chromium not found (apt-get install -y chromium)" >&2; exit 2; }

# --no-sandbox: containers usually run as root, where Chromium's sandbox refuses to start.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="${WINDOW:-1280,3000}" --screenshot="$out" "file://$report" 2>/dev/null
[[ -s "$out" ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "screenshot: $out"
