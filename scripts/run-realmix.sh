#!/usr/bin/env bash
# Reproduce the paper's claim on real responses (../shared/data/realmix, never copied into the project):
# process realmix for each tokenizer, train SCM and the full-detection baseline on SmolLM2-135M and the encoder
# baseline on MiniLM, evaluate each in full and partial mode, and write one Table-2-style report.
#
#   bash scripts/run-realmix.sh                 # CPU recipe (see BUDGET below), ~2 h on 2 idle cores once the
#                                               # frozen-prefix cache exists (built once, see results/recipe-ablation)
#   FRESH=1 bash scripts/run-realmix.sh         # re-evaluate every model, even those whose evaluation is newer
#                                               # than their checkpoint (skipped otherwise, their timing row kept)
#   BUDGET=full bash scripts/run-realmix.sh     # the paper's budget (3 epochs, whole prompts, all layers): a GPU run
#   REALMIX=/path/to/realmix OUT=results/realmix bash scripts/run-realmix.sh
#
# BUDGET names the training flags, in scripts/recipes/realmix-$BUDGET.sh (each says what it is): cpu, the CPU
# recipe of results/recipe-ablation/README.md (the last 64 prompt tokens, three epochs on all 2,560 training
# examples with the lower 24 of SmolLM2's 30 blocks frozen, the frozen blocks run once through a kept cache);
# cpu-1ep, the same with one epoch (the results of 2026-11-29 19:36); cpu-v1, the first reduced budget (the results
# before the recipe ablation); response-1ep, cpu-1ep on the response alone (no prompt token, a probe of what the
# prompt contributes); views-1ep, one epoch on both views (the response alone, served, and with the last 64 prompt
# tokens); full, the paper's.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
enter_repo REALMIX OUT RUNS  # it chains the other drivers by their repository paths
REALMIX="${REALMIX:-$SCM_ROOT/../shared/data/realmix}"
OUT="${OUT:-results/realmix}"
RUNS="${RUNS:-runs/realmix}"
BUDGET="${BUDGET:-cpu}"
SMOL="$(asset_path smollm2)"
MINILM="$(asset_path minilm)"
[ -f "$REALMIX/test_new.json" ] || { echo "run-realmix.sh: no realmix at $REALMIX (set REALMIX=...)" >&2; exit 2; }

RECIPE="scripts/recipes/realmix-$BUDGET.sh"  # sets DATA_FLAGS, ENCODER_DATA_FLAGS, CAUSAL_FLAGS, ENCODER_FLAGS
[ -f "$RECIPE" ] || { echo "run-realmix.sh: BUDGET must be one of: $(cd scripts/recipes && ls realmix-*.sh | sed 's/realmix-//; s/\.sh//' | LC_ALL=C sort | tr '\n' ' ')(no $RECIPE)" >&2; exit 2; }
EXTRA_VIEW_FLAGS=()  # a recipe may add a second view of the same examples to the causal models' training
# shellcheck disable=SC1090
source "$RECIPE"

DATA_BUDGET="${BUDGET%-*}"  # cpu-v1 and cpu-1ep process the data as cpu does
CAUSAL_DATA="$SCM_ROOT/.cache/data/realmix-$DATA_BUDGET-smollm2"
ENCODER_DATA="$SCM_ROOT/.cache/data/realmix-$DATA_BUDGET-minilm"
mkdir -p "$OUT"
# timed NAME COMMAND...: NAME's row of $OUT/timings.tsv; a skipped step keeps the time of the run that produced it
timed() { timed_step "$OUT/timings.tsv" "$@"; }
[ -f "$CAUSAL_DATA/meta.json" ] || timed data-smollm2 bash scripts/run-data.sh "$CAUSAL_DATA" "$SMOL" --input-dir "$REALMIX" "${DATA_FLAGS[@]}"
CAUSAL_TRAINING=("$CAUSAL_DATA")  # --data-dir of the causal models: the served view, then any extra view
if [ "${#EXTRA_VIEW_FLAGS[@]}" -gt 0 ]; then
  VIEW_DATA="$CAUSAL_DATA-extra-view"
  [ -f "$VIEW_DATA/meta.json" ] || timed data-smollm2-extra-view bash scripts/run-data.sh "$VIEW_DATA" "$SMOL" \
    --input-dir "$REALMIX" "${EXTRA_VIEW_FLAGS[@]}"
  CAUSAL_TRAINING+=("$VIEW_DATA" --served-prompt-cut-from "$CAUSAL_DATA")
fi
[ -f "$ENCODER_DATA/meta.json" ] || timed data-minilm bash scripts/run-data.sh "$ENCODER_DATA" "$MINILM" --input-dir "$REALMIX" "${ENCODER_DATA_FLAGS[@]}"

train() {  # train NAME SCRIPT FLAGS...: skip when already trained (the neural runs add --report-to tensorboard)
  local name="$1"; shift
  if [ -f "$RUNS/$name/training_summary.json" ]; then
    echo "[realmix] $name already trained"
    return
  fi
  timed "train-$name" "$@" --output-dir "$RUNS/$name"
}
train scm bash scripts/run-scm.sh --base-model-path "$SMOL" --data-dir "${CAUSAL_TRAINING[@]}" "${CAUSAL_FLAGS[@]}" --report-to tensorboard
train qwen-full bash scripts/run-qwen-full.sh --base-model-path "$SMOL" --data-dir "${CAUSAL_TRAINING[@]}" "${CAUSAL_FLAGS[@]}" --report-to tensorboard
train encoder bash scripts/run-modernbert-full.sh --base-model-path "$MINILM" --data-dir "$ENCODER_DATA" "${ENCODER_FLAGS[@]}" --report-to tensorboard
# The lexical floor (TF-IDF + logistic regression, seconds) on the decoded responses of the SmolLM2 models' split,
# under either budget; evaluated in full and partial mode beside the others.
train lexical bash scripts/run-lexical.sh --data-dir "$CAUSAL_DATA"

evaluate() {  # evaluate NAME RUN COMMAND...: skip when $OUT/NAME is newer than the run's checkpoint (unless FRESH=1)
  local name="$1" run="$2"; shift 2
  if is_current "$OUT/$name/summary.json" "$RUNS/$run/training_summary.json"; then
    echo "[realmix] $name already evaluated on the current $run checkpoint (FRESH=1 re-evaluates)"
    return
  fi
  timed "eval-$name" "$@" --output-dir "$OUT/$name"
}
evaluate scm scm bash scripts/run-scm.sh test --model-path "$RUNS/scm" --data-dir "$CAUSAL_DATA"
evaluate qwen-full qwen-full bash scripts/run-qwen-full.sh test --model-path "$RUNS/qwen-full" --data-dir "$CAUSAL_DATA"
evaluate qwen-partial qwen-full bash scripts/run-qwen-partial.sh test --model-path "$RUNS/qwen-full" --data-dir "$CAUSAL_DATA"
evaluate encoder-full encoder bash scripts/run-modernbert-full.sh test --model-path "$RUNS/encoder" --data-dir "$ENCODER_DATA"
evaluate encoder-partial encoder bash scripts/run-modernbert-partial.sh test --model-path "$RUNS/encoder" --data-dir "$ENCODER_DATA"
evaluate lexical-full lexical bash scripts/run-lexical.sh test --mode full --model-path "$RUNS/lexical" --data-dir "$CAUSAL_DATA"
evaluate lexical-partial lexical bash scripts/run-lexical.sh test --mode partial --model-path "$RUNS/lexical" --data-dir "$CAUSAL_DATA"
for name in scm qwen-full encoder; do
  cp "$RUNS/$name/training_summary.json" "$OUT/training-summary-$name.json"
done
cp "$RUNS/lexical/training_summary.json" "$OUT/training-summary-lexical.json"
bash scripts/run-report.sh "$OUT/scm" "$OUT/qwen-full" "$OUT/qwen-partial" "$OUT/encoder-full" "$OUT/encoder-partial" \
  "$OUT/lexical-full" "$OUT/lexical-partial" --output "$OUT/report.md"
cat "$OUT/report.md"
