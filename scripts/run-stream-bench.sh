#!/usr/bin/env bash
# CPU benchmark of the streaming runtime: per-token cost of the incremental (KV-cached) path versus re-scoring the
# whole prefix, SmolLM2-135M backbone, prefixes 128/512/1024, batch 1 and 8; writes results/streaming-cpu/.
#   bash scripts/run-stream-bench.sh
#   bash scripts/run-stream-bench.sh --tiny --output-dir /tmp/bench-tiny      # seconds, smoke test
#   bash scripts/run-stream-bench.sh --prefix-lengths 512 --batch-sizes 1 --threads 2
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
extra=()
has_flag output-dir "$@" || extra+=(--output-dir "$(repo_path results/streaming-cpu)")
exec python -m bench.bench_streaming "${extra[@]}" "$@"
