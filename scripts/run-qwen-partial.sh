#!/usr/bin/env bash
# Qwen partial detection: the full-detection model's holistic head applied at every response prefix (one causal
# pass per example), with the delay-k rule. Only `test`: it uses the model trained by run-qwen-full.sh.
#   bash scripts/run-qwen-partial.sh test --model-path baseline-qwen-0.5b --data-dir baseline-qwen --output-dir metrics/qwen-partial
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "${1:-}" != "test" ]; then
  echo "usage: bash scripts/run-qwen-partial.sh test --model-path CKPT --data-dir DIR --output-dir DIR" >&2
  echo "(partial detection reuses the checkpoint trained by scripts/run-qwen-full.sh)" >&2
  exit 2
fi
shift
exec python -m test.test_qwen_partial --scorer holistic "$@"
