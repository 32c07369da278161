#!/usr/bin/env bash
# Full benchmark run on a quiet machine: refuses to start while the machine is busy
# (timings under load are not comparable), then runs `reptile-tf bench` into results/benchmarks/<CPU class>/.
# Usage: benchmarks/run_full.sh [extra reptile-tf bench flags]   (FORCE=1 skips the load check)
# e.g. benchmarks/run_full.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export TF_CPP_MIN_LOG_LEVEL=2
cores=$(nproc)
load=$(cut -d' ' -f1 /proc/loadavg)
if [ "${FORCE:-0}" != 1 ] && awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l > 0.5 * c) }'; then
  echo "load average $load on $cores cores: the machine is busy; wait, or FORCE=1 to measure under load" >&2
  exit 1
fi
# The peers (learn2learn on PyTorch) run in their own environment, made once (several GB).
bash benchmarks/peers/setup.sh
exec "$BIN/reptile-tf" bench --peer-python .cache/peers/venv/bin/python "$@"
