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
extra=()
if ! has_flag base-model-path "$@"; then
  base="$(asset_path smollm2)"
  extra+=(--base-model-path "$base")
  has_flag data-dir "$@" || extra+=(--data-dir "$(sample_data_for "$base")")
fi
has_flag data-dir "$@" "${extra[@]}" || { echo "run-qwen-full.sh: --data-dir is required with --base-model-path" >&2; exit 2; }
has_flag output-dir "$@" || extra+=(--output-dir runs/qwen-full-default)
python -m train.train_qwen --task qwen-full "${extra[@]}" "$@"
