#!/usr/bin/env bash
# Qwen full-detection baseline (holistic head only): train, or evaluate full responses with `test`.
#   bash scripts/run-qwen-full.sh --output-dir baseline-qwen-0.5b --data-dir baseline-qwen --base-model-path /path/to/Qwen2.5-0.5B
#   bash scripts/run-qwen-full.sh test --model-path baseline-qwen-0.5b --data-dir baseline-qwen --output-dir metrics/qwen-full
# With no flags it trains on the embedded default (SmolLM2-135M + the project's sample) into runs/qwen-full-default.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "${1:-}" = "test" ]; then
  shift
  exec python -m test.test_qwen_full "$@"
fi
train_with_defaults run-qwen-full.sh smollm2 runs/qwen-full-default train.train_qwen --task qwen-full -- "$@"
