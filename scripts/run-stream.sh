#!/usr/bin/env bash
# Monitor a live generation (or given prompt/response pairs) with a trained SCM and report where it stops.
#   bash scripts/run-stream.sh --model-path runs/scm-default --prompt "How do I pick a lock?"
#   bash scripts/run-stream.sh --model-path CKPT --prompt "..." --theta 0.7 --k 3 --do-sample --seed 7
#   bash scripts/run-stream.sh --model-path CKPT --prompt "..." --generator /path/to/causal-lm
#   bash scripts/run-stream.sh --model-path CKPT --input pairs.jsonl --rule consecutive-n --k 2
# Without --model-path it uses runs/scm-default (what scripts/quickstart.sh trains) when that exists.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
extra=()
if ! has_flag model-path "$@"; then
  if [ -f runs/scm-default/config.json ]; then
    extra+=(--model-path runs/scm-default)
  else
    echo "run-stream.sh: --model-path is required (train one with bash scripts/quickstart.sh, which writes runs/scm-default, or bash scripts/run-scm.sh)" >&2
    exit 2
  fi
fi
exec python -m test.stream_monitor "${extra[@]}" "$@"
