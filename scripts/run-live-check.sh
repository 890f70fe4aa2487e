#!/usr/bin/env bash
# Live check: monitors in front of the embedded SmolLM2-135M-Instruct's own answers, to realmix test prompts or (with
# PROMPTS=...) to the project's own prompt set.
#
#   bash scripts/run-live-check.sh generate          # answer every distinct prompt (greedy, 160 new tokens; hours
#                                                     # on a busy 2-core CPU) into $OUT/answers.jsonl, resumable
#   bash scripts/run-live-check.sh                    # the lexical floor of run-realmix.sh (runs/realmix/cpu/lexical)
#   bash scripts/run-live-check.sh NAME CHECKPOINT REALMIX_EVAL [NAME CHECKPOINT REALMIX_EVAL ...]
#   e.g. bash scripts/run-live-check.sh scm runs/realmix/cpu/scm results/realmix/scm \
#          qwen-partial runs/realmix/cpu/qwen-full results/realmix/qwen-partial \
#          encoder-partial runs/realmix/cpu/encoder results/realmix/encoder-partial \
#          lexical runs/realmix/cpu/lexical results/realmix/lexical-partial
#
# Each monitor is scored on the labelled answers ($OUT/labels.jsonl, rule in $OUT/LABELLING.md) with its own
# partial-detection entry point (SCM: token scorer; the others: holistic) at both leak-free operating points of its
# realmix evaluation REALMIX_EVAL (OPERATING_POINTS lists other keys of that summary). Results: $OUT/runs/NAME.json
# and $OUT/live-check.md; processed data and evaluations under $RUNS.
#
# The project's own prompts (test/live_prompts.jsonl; OUT defaults to results/live-check-own, RUNS to
# runs/live-check-own):
#
#   PROMPTS=test/live_prompts.jsonl bash scripts/run-live-check.sh generate
#   PROMPTS=test/live_prompts.jsonl bash scripts/run-live-check.sh      # the floor of run-realmix.sh on realmix2
#   PROMPTS=test/live_prompts.jsonl bash scripts/run-live-check.sh NAME CHECKPOINT [NAME CHECKPOINT ...]
#   e.g. PROMPTS=test/live_prompts.jsonl bash scripts/run-live-check.sh scm runs/realmix2/cpu/scm \
#          lexical runs/realmix2/cpu/lexical
#
# There each monitor is scored at the points its checkpoint carries: OPERATING_POINTS (default
# served,leak_free,leak_free_early,leak_free_budget) names them, served being the point the checkpoint serves with no
# flag (the default of its operating_point.json, else its config's), the others the rules of its operating_point.json
# (a rule its evaluation chose no point for is skipped and recorded). The tokenizer and prompt cut are the
# checkpoint's.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PROMPTS="${PROMPTS:-}"
if [ -n "$PROMPTS" ]; then
  [ -f "$PROMPTS" ] || { echo "run-live-check.sh: no prompt set at $PROMPTS (python -m test.live_prompts writes test/live_prompts.jsonl)" >&2; exit 2; }
  OUT="${OUT:-$(repo_path results/live-check-own)}"
  RUNS="${RUNS:-$(repo_path runs/live-check-own)}"
  OPERATING_POINTS="${OPERATING_POINTS:-served,leak_free,leak_free_early,leak_free_budget}"
  if [ "${1:-}" = "generate" ]; then
    shift
    exec python -m test.live_generate --prompts "$PROMPTS" --output-file "$OUT/answers.jsonl" --num-threads 1 "$@"
  fi
  if [ "$#" -eq 0 ]; then
    set -- lexical "$(repo_path runs/realmix2/cpu/lexical)"
  fi
  if [ $(( $# % 2 )) -ne 0 ]; then
    echo "usage: PROMPTS=FILE bash scripts/run-live-check.sh [generate | NAME CHECKPOINT [NAME CHECKPOINT ...]]" >&2
    exit 2
  fi
  python -m test.live_check build --answers "$OUT/answers.jsonl" --labels "$OUT/labels.jsonl" --prompts "$PROMPTS" \
    --output-dir "$RUNS/fineharm"
  while [ "$#" -gt 0 ]; do
    python -m test.live_check run --name "$1" --model-path "$2" --fineharm-dir "$RUNS/fineharm" --work-dir "$RUNS" \
      --output-dir "$OUT" --operating-points "$OPERATING_POINTS"
    shift 2
  done
  exec python -m test.live_check table --output-dir "$OUT"
fi
REALMIX="${REALMIX:-$SCM_ROOT/../shared/data/realmix}"
OUT="${OUT:-$(repo_path results/live-check)}"
RUNS="${RUNS:-$(repo_path runs/live-check)}"
OPERATING_POINTS="${OPERATING_POINTS:-leak_free,leak_free_early}"
[ -f "$REALMIX/test_new.json" ] || { echo "run-live-check.sh: no realmix at $REALMIX (set REALMIX=...)" >&2; exit 2; }
if [ "${1:-}" = "generate" ]; then
  shift
  exec python -m test.live_generate --input-dir "$REALMIX" --split test --output-file "$OUT/answers.jsonl" \
    --num-threads 1 "$@"
fi
if [ "$#" -eq 0 ]; then
  set -- lexical "$(repo_path runs/realmix/cpu/lexical)" "$(repo_path results/realmix/lexical-partial)"
fi
if [ $(( $# % 3 )) -ne 0 ]; then
  echo "usage: bash scripts/run-live-check.sh [generate | NAME CHECKPOINT REALMIX_EVAL [NAME CHECKPOINT REALMIX_EVAL ...]]" >&2
  exit 2
fi
python -m test.live_check build --answers "$OUT/answers.jsonl" --labels "$OUT/labels.jsonl" --input-dir "$REALMIX" \
  --output-dir "$RUNS/fineharm"
while [ "$#" -gt 0 ]; do
  python -m test.live_check run --name "$1" --model-path "$2" --realmix-eval "$3" --fineharm-dir "$RUNS/fineharm" \
    --work-dir "$RUNS" --output-dir "$OUT" --operating-points "$OPERATING_POINTS"
  shift 3
done
python -m test.live_check table --output-dir "$OUT"
