#!/usr/bin/env bash
# CPU benchmark of the gateway: 1, 8, 32, 64 concurrent streams (and 32 unbatched) through a proxy-mode gateway in
# front of a scripted upstream; the monitor's cost per token, tokens/s, batch sizes, added latency p50/p99.
# Writes results/serve-bench/.
#   bash scripts/run-serve-bench.sh
#   bash scripts/run-serve-bench.sh --levels 1,8 --baseline-levels "" --deltas-per-second 20
#   bash scripts/run-serve-bench.sh --tiny --output-dir /tmp/serve-bench-tiny      # seconds, smoke test
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
# The repository's default, named from the folder the user runs this in (paths the user types stay theirs).
extra=()
has_flag output-dir "$@" || extra+=(--output-dir "$(repo_path results/serve-bench)")
exec python -m bench.bench_serve "${extra[@]}" "$@"
