#!/usr/bin/env bash
# Monitor a live generation (or given prompt/response pairs) with a trained SCM and report where it stops.
#   bash scripts/run-stream.sh --model-path runs/scm-default --prompt "How do I pick a lock?"
#   bash scripts/run-stream.sh --model-path CKPT --prompt "..." --theta 0.7 --k 3 --do-sample --seed 7
#   bash scripts/run-stream.sh --model-path CKPT --prompt "..." --generator /path/to/causal-lm
#   bash scripts/run-stream.sh --model-path CKPT --input pairs.jsonl --rule consecutive-n --k 2
# With no --theta/--k it uses the point CKPT/operating_point.json records (`--operating-point budget` picks another),
# and its first line says where the point came from (docs/OPERATING-POINT.md).
# Without --model-path it uses the repository's runs/scm-default (what scripts/quickstart.sh trains) when that
# exists. Paths are taken from the folder you run it in.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
extra=()
# The default checkpoint when there is one; otherwise the python module says what to pass (and --help still works).
if ! has_flag model-path "$@" && [ -f "$SCM_ROOT/runs/scm-default/config.json" ]; then
  extra+=(--model-path "$(repo_path runs/scm-default)")
fi
exec python -m test.stream_monitor "${extra[@]}" "$@"
