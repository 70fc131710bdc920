#!/usr/bin/env bash
# The quickstart from fresh clones, N times, for README's "What the quickstart shows" (how often each lesson's
# verdict held). Each run: a fresh clone of this checkout's HEAD, `foundry quickstart`, then its Findings, report
# and stage times copied to benchmarks/results/quickstart_runs/runK/ with the commit, wall time and load average.
#
#   bash benchmarks/quickstart_runs.sh [N=3] [FIRST=1]
#
# FOUNDRY_VENV=PATH reuses an installed environment (its python runs the clone's code through PYTHONPATH);
# without it each clone gets its own virtualenv (`pip install -e .`), as the README's first command does.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-3}
first=${2:-1}
out="$repo/benchmarks/results/quickstart_runs"
for k in $(seq "$first" $((first + n - 1))); do
  work=$(mktemp -d /tmp/foundry-quickstart-XXXX)
  git clone -q "$repo" "$work/foundry"
  cd "$work/foundry"
  if [ -n "${FOUNDRY_VENV:-}" ]; then
    python="$FOUNDRY_VENV/bin/python"; export PYTHONPATH="$work/foundry/src"
  else
    python3 -m venv .venv && .venv/bin/pip install -q -e . && python=.venv/bin/python
  fi
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s)
  "$python" -m foundry.cli quickstart > "$work/quickstart.log" 2>&1
  seconds=$(( $(date +%s) - start ))
  mkdir -p "$out/run$k"
  cp runs/quickstart/report/findings.json "$out/run$k/findings.json"
  cp runs/quickstart/report/report.md "$out/run$k/report.md"
  grep '^\[foundry run\]' "$work/quickstart.log" > "$out/run$k/stages.txt" || true
  cat > "$out/run$k/run.json" <<JSON
{"commit": "$(git rev-parse HEAD)", "seconds": $seconds, "load_average_before": "$load_before",
 "load_average_after": "$(cut -d' ' -f1-3 /proc/loadavg)", "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)",
 "cores": $(nproc), "date_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
JSON
  echo "run $k: $seconds s -> $out/run$k"
  cd "$repo"
  rm -rf "$work"
done
