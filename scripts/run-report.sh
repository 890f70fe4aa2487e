#!/usr/bin/env bash
# Merge the summaries of several evaluation runs into one Table-2-style markdown table.
#   bash scripts/run-report.sh runs/eval/scm runs/eval/qwen-full runs/eval/qwen-partial --output runs/eval/report.md
# Without --output the table is printed. Each folder is an evaluation --output-dir (it holds summary.json).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "$#" -eq 0 ]; then
  echo "usage: bash scripts/run-report.sh EVAL_DIR [EVAL_DIR ...] [--output FILE.md]" >&2
  exit 2
fi
exec python -m utils.report "$@"
