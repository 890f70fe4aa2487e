#!/usr/bin/env bash
# SCM: train, or evaluate with `test` as the first argument.
#   bash scripts/run-scm.sh --output-dir scm-0.5b --data-dir scm --base-model-path /path/to/Qwen2.5-0.5B
#   bash scripts/run-scm.sh test --model-path scm-0.5b --data-dir scm --output-dir metrics/scm-0.5b [--verify-streaming]
# With no flags it trains on the embedded default (SmolLM2-135M + the project's sample) into runs/scm-default.
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
extra=()
if ! has_flag base-model-path "$@"; then
  base="$(asset_path smollm2)"
  extra+=(--base-model-path "$base")
  has_flag data-dir "$@" || extra+=(--data-dir "$(sample_data_for "$base")")
fi
has_flag data-dir "$@" "${extra[@]}" || { echo "run-scm.sh: --data-dir is required with --base-model-path" >&2; exit 2; }
has_flag output-dir "$@" || extra+=(--output-dir runs/scm-default)
python -m train.train_qwen --task scm "${extra[@]}" "$@"
