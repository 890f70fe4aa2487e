#!/usr/bin/env bash
# Encoder (ModernBERT) full-detection baseline: train, or evaluate with `test`.
#   bash scripts/run-modernbert-full.sh --output-dir baseline_modernbert-full --data-dir baseline_modernbert --base-model-path /path/to/ModernBERT
#   bash scripts/run-modernbert-full.sh test --model-path baseline_modernbert-full --data-dir baseline_modernbert --output-dir metrics/modernbert-full
# With no flags it trains all-MiniLM-L6-v2 (the offline stand-in) on the project's sample into runs/encoder-default.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "${1:-}" = "test" ]; then
  shift
  exec python -m test.test_modernbert_full "$@"
fi
extra=()
if ! has_flag base-model-path "$@"; then
  base="$(asset_path minilm)"
  extra+=(--base-model-path "$base")
  has_flag data-dir "$@" || extra+=(--data-dir "$(sample_data_for "$base")")
fi
has_flag data-dir "$@" "${extra[@]}" || { echo "run-modernbert-full.sh: --data-dir is required with --base-model-path" >&2; exit 2; }
has_flag output-dir "$@" || extra+=(--output-dir runs/encoder-default)
python -m train.train_modernbert "${extra[@]}" "$@"
