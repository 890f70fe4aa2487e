#!/usr/bin/env bash
# Merge the summaries of several evaluation runs into one Table-2-style markdown table.
#   bash scripts/run-report.sh runs/eval/scm runs/eval/qwen-full runs/eval/qwen-partial --output runs/eval/report.md
#   bash scripts/run-report.sh runs/eval/scm --lexical-floor scm --output runs/eval/report.md
# Without --output the table is printed. Each folder is an evaluation --output-dir (it holds summary.json).
# --lexical-floor DATA_DIR adds the lexical floor's rows: it is trained on DATA_DIR's train split and evaluated in
# full and partial mode (bash scripts/run-lexical.sh floor) into lexical-floor/ beside the --output file (or
# runs/lexical-floor/<DATA_DIR name> without --output), and both runs join the table.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "$#" -eq 0 ]; then
  echo "usage: bash scripts/run-report.sh EVAL_DIR [EVAL_DIR ...] [--lexical-floor DATA_DIR] [--output FILE.md]" >&2
  exit 2
fi
args=() floor_data="" output=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --lexical-floor|--lexical_floor)
      [ "$#" -ge 2 ] || { echo "run-report.sh: --lexical-floor needs a processed data folder" >&2; exit 2; }
      floor_data="$2"; shift 2 ;;
    --output) args+=("$1"); shift; if [ "$#" -gt 0 ]; then output="$1"; args+=("$1"); shift; fi ;;
    --output=*) output="${1#--output=}"; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$floor_data" ]; then
  floor_out="${output:+$(dirname "$output")/lexical-floor}"
  floor_out="${floor_out:-runs/lexical-floor/$(basename "$floor_data")}"
  bash scripts/run-lexical.sh floor --data-dir "$floor_data" --output-dir "$floor_out" >&2
  args+=("$floor_out/full" "$floor_out/partial")
fi
exec python -m utils.evaluation.report "${args[@]}"
