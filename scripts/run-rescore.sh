#!/usr/bin/env bash
# Recompute the metrics JSONs, summary.json, plots and report.md of evaluation folders from their predictions files
# (no model is run), e.g. after a metric change; optionally merge them into one report.
#   bash scripts/run-rescore.sh results/realmix/scm results/realmix/qwen-full --report results/realmix/report.md
#   bash scripts/run-rescore.sh runs/eval/scm --selection-tolerance 0.5
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "$#" -eq 0 ]; then
  echo "usage: bash scripts/run-rescore.sh EVAL_DIR [EVAL_DIR ...] [--report FILE.md] [--thresholds T,T]" \
    "[--max-k N] [--selection-tolerance POINTS] [--max-benign-stop-rate R]" >&2
  exit 2
fi
exec python -m utils.evaluation.rescore "$@"
