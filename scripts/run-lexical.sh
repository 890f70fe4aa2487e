#!/usr/bin/env bash
# The lexical floor (TF-IDF + logistic regression on the decoded processed responses): train, evaluate, or both.
#   bash scripts/run-lexical.sh --data-dir scm --output-dir runs/lexical                       # train (seconds)
#   bash scripts/run-lexical.sh test --model-path runs/lexical --data-dir scm --output-dir metrics/lexical-partial
#   bash scripts/run-lexical.sh test --mode full --model-path runs/lexical --data-dir scm --output-dir metrics/lexical-full
#   bash scripts/run-lexical.sh floor --data-dir scm --output-dir metrics/lexical-floor        # all three at once
# `floor` trains on DATA_DIR's train split into OUTPUT_DIR/model (seconds, so always anew), then evaluates it in
# full mode (OUTPUT_DIR/full) and partial mode (OUTPUT_DIR/partial); pass both folders to run-report.sh (or use its
# --lexical-floor flag). With no flags, training uses the project's sample processed for SmolLM2.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
case "${1:-}" in
  test)
    shift
    exec python -m test.test_lexical "$@" ;;
  floor)
    shift
    data="" out=""
    while [ "$#" -gt 0 ]; do
      case "$1" in
        --data-dir|--data_dir) data="$2"; shift 2 ;;
        --output-dir|--output_dir) out="$2"; shift 2 ;;
        *) echo "run-lexical.sh floor: only --data-dir DIR and --output-dir DIR are accepted (got $1)" >&2; exit 2 ;;
      esac
    done
    if [ -z "$data" ] || [ -z "$out" ]; then
      echo "usage: bash scripts/run-lexical.sh floor --data-dir DATA_DIR --output-dir OUTPUT_DIR" >&2; exit 2
    fi
    python -m train.train_lexical --data-dir "$data" --output-dir "$out/model"
    python -m test.test_lexical --mode full --model-path "$out/model" --data-dir "$data" --output-dir "$out/full"
    python -m test.test_lexical --mode partial --model-path "$out/model" --data-dir "$data" --output-dir "$out/partial"
    ;;
  *)
    extra=()
    has_flag data-dir "$@" || extra+=(--data-dir "$(sample_data_for "$(asset_path smollm2)")")
    has_flag output-dir "$@" || extra+=(--output-dir "$(repo_path runs/lexical-default)")
    exec python -m train.train_lexical "${extra[@]}" "$@" ;;
esac
