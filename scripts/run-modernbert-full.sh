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
train_with_defaults run-modernbert-full.sh minilm runs/encoder-default train.train_modernbert -- "$@"
