#!/usr/bin/env bash
# SCM: train, or evaluate with `test` as the first argument.
#   bash scripts/run-scm.sh --output-dir scm-0.5b --data-dir scm --base-model-path /path/to/Qwen2.5-0.5B
#   bash scripts/run-scm.sh test --model-path scm-0.5b --data-dir scm --output-dir metrics/scm-0.5b [--verify-streaming]
# With no flags it trains on the embedded default (SmolLM2-135M + the project's sample) into runs/scm-default.
# `test` also writes the chosen operating point into CKPT/operating_point.json, which run-serve.sh and run-stream.sh
# serve by default; --max-benign-stop-rate R sets the false-stop budget rule (docs/OPERATING-POINT.md).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "${1:-}" = "test" ]; then
  shift
  verify=0
  args=()
  for arg in "$@"; do
    if [ "$arg" = "--verify-streaming" ]; then verify=1; else args+=("$arg"); fi
  done
  python -m test.test_qwen_partial --scorer both "${args[@]}"
  if [ "$verify" = 1 ]; then
    python -m test.verify_streaming "${args[@]}"
  fi
  exit 0
fi
train_with_defaults run-scm.sh smollm2 runs/scm-default train.train_qwen --task scm -- "$@"
