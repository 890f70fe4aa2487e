#!/usr/bin/env bash
# Reproduce the paper's claim on real responses (../shared/data/realmix2 by default, or realmix; never copied into
# the project): process the data for each tokenizer, train SCM and the full-detection baseline on SmolLM2-135M and
# the encoder baseline on MiniLM, evaluate each in full and partial mode, and write one Table-2-style report.
#
#   bash scripts/run-realmix.sh                 # CPU recipe (see BUDGET below), ~2 h on 2 idle cores once the
#                                               # frozen-prefix cache exists (built once, see results/recipe-ablation)
#   FRESH=1 bash scripts/run-realmix.sh         # re-evaluate every model, even those whose evaluation is newer
#                                               # than their checkpoint (skipped otherwise, their timing row kept)
#   BUDGET=full bash scripts/run-realmix.sh     # the paper's budget (3 epochs, whole prompts, all layers): a GPU run
#   REALMIX=/path/to/realmix OUT=results/realmix bash scripts/run-realmix.sh
#   RECIPE=my-flags.sh bash scripts/run-realmix.sh  # a recipe file of one's own (the arrays below)
#   SEED=43 MODELS=scm bash scripts/run-realmix.sh  # another seed of SCM alone (runs/realmix2/cpu-seed43,
#                                               # results/realmix2/seeds/seed43); MODELS: any of scm lexical
#                                               # qwen-full encoder (default all four)
#
# BUDGET names the training flags, in scripts/recipes/$DATASET-$BUDGET.sh (each says what it is; RECIPE=FILE names
# another). On realmix2, the default data: cpu, one epoch of SmolLM2 (the lower 24 of its 30 blocks frozen, read
# through a kept cache) on 6,000 responses alone, sized for 2 CPU cores; full, the paper's. On realmix
# (REALMIX=../shared/data/realmix): cpu, the CPU recipe of results/recipe-ablation/README.md (one epoch of the same
# frozen SmolLM2 on both views of every training example: the response alone, which is served, and the response
# after the last 64 prompt tokens); prompt-3ep, three epochs on the prompt-reading view alone; response-1ep, one
# epoch on the response alone; full, the paper's. A recipe sets DATA_FLAGS / ENCODER_DATA_FLAGS (run-data.sh flags
# for SmolLM2 / MiniLM), CAUSAL_FLAGS (run-scm.sh and run-qwen-full.sh training flags), ENCODER_FLAGS
# (run-modernbert-full.sh training flags) and may set EXTRA_VIEW_FLAGS (run-data.sh flags of a second view the causal
# models also train on) and ENCODER_PARTIAL_FLAGS (run-modernbert-partial.sh test flags).
#
# Finished steps are skipped, never reused wrongly: processed folders go to $PROCESSED (default .cache/data) under
# names fingerprinting the data, the tokenizer and the flags; models go to $RUNS (default runs/$DATASET/$BUDGET), each
# beside a NAME.command file with the command that trained it (a model trained by another command is refused, with
# the fix); an evaluation in $OUT is kept only when it is newer than its model and records that model and folder.
# SMOL / MINILM override the backbones (tests use tiny ones).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
enter_repo REALMIX OUT RUNS RECIPE PROCESSED SMOL MINILM  # it chains the other drivers by their repository paths
REALMIX="${REALMIX:-$SCM_ROOT/../shared/data/realmix2}"
DATASET="$(basename "$REALMIX")"  # realmix2 or realmix: names the recipes, runs and results
OUT_GIVEN="${OUT:-}"
OUT="${OUT:-results/$DATASET}"
if [ -n "${RECIPE:-}" ]; then
  BUDGET="${BUDGET:-$(basename "$RECIPE" .sh)}"
  [ -f "$RECIPE" ] || { echo "run-realmix.sh: RECIPE file $RECIPE not found" >&2; exit 2; }
else
  BUDGET="${BUDGET:-cpu}"
  RECIPE="scripts/recipes/$DATASET-$BUDGET.sh"
  [ -f "$RECIPE" ] || { echo "run-realmix.sh: BUDGET must be one of: $(cd scripts/recipes && ls "$DATASET"-*.sh 2>/dev/null | sed "s/^$DATASET-//; s/\.sh//" | LC_ALL=C sort | tr '\n' ' ')(no $RECIPE; RECIPE=FILE names another)" >&2; exit 2; }
fi
SEED="${SEED:-}"  # empty: the training scripts' default seed (42); another names its own runs and results
if [ -n "$SEED" ]; then
  [[ "$SEED" =~ ^[0-9]+$ ]] || { echo "run-realmix.sh: SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }
  RUNS="${RUNS:-runs/$DATASET/$BUDGET-seed$SEED}"
  OUT="${OUT_GIVEN:-results/$DATASET/seeds/seed$SEED}"
fi
RUNS="$(inside_repo "${RUNS:-runs/$DATASET/$BUDGET}")"
PROCESSED="$(inside_repo "${PROCESSED:-.cache/data}")"
OUT="$(inside_repo "$OUT")"
[ -f "$REALMIX/test_new.json" ] || { echo "run-realmix.sh: no FineHarm-format data at $REALMIX (no test_new.json; set REALMIX=...)" >&2; exit 2; }
SMOL="${SMOL:-$(asset_path smollm2)}"
MINILM="${MINILM:-$(asset_path minilm)}"
MODELS="${MODELS:-scm lexical qwen-full encoder}"
for model in $MODELS; do
  case "$model" in scm|lexical|qwen-full|encoder) ;;
    *) echo "run-realmix.sh: unknown model $model in MODELS (scm, lexical, qwen-full, encoder)" >&2; exit 2 ;;
  esac
done
needs() { [[ " $MODELS " == *" $1 "* ]]; }

DATA_FLAGS=() ENCODER_DATA_FLAGS=() CAUSAL_FLAGS=() ENCODER_FLAGS=() EXTRA_VIEW_FLAGS=() ENCODER_PARTIAL_FLAGS=()
# shellcheck disable=SC1090
source "$RECIPE"

# processed_folder TOKENIZER NAME FLAGS...: the folder run-data.sh writes realmix into for TOKENIZER and FLAGS
processed_folder() {
  local tokenizer="$1" name="$2"; shift 2
  echo "$PROCESSED/$DATASET-$name-$(flags_tag "$(realpath "$REALMIX")" "$(realpath "$tokenizer")" "$@")"
}
CAUSAL_DATA="$(processed_folder "$SMOL" smollm2 "${DATA_FLAGS[@]}")"
ENCODER_DATA="$(processed_folder "$MINILM" minilm "${ENCODER_DATA_FLAGS[@]}")"
mkdir -p "$OUT"
# timed NAME COMMAND...: NAME's row of $OUT/timings.tsv; a skipped step keeps the time of the run that produced it
timed() { timed_step "$OUT/timings.tsv" "$@"; }
if [ -n "$SEED" ]; then  # every trained model (the lexical floor has no randomness to seed)
  CAUSAL_FLAGS+=(--seed "$SEED"); ENCODER_FLAGS+=(--seed "$SEED")
fi
needs scm || needs lexical || needs qwen-full || CAUSAL_DATA=""
[ -z "$CAUSAL_DATA" ] || [ -f "$CAUSAL_DATA/meta.json" ] || timed data-smollm2 bash scripts/run-data.sh "$CAUSAL_DATA" "$SMOL" --input-dir "$REALMIX" "${DATA_FLAGS[@]}"
CAUSAL_TRAINING=("$CAUSAL_DATA")  # --data-dir of the causal models: the served view, then any extra view
if [ "${#EXTRA_VIEW_FLAGS[@]}" -gt 0 ] && { needs scm || needs qwen-full; }; then
  VIEW_DATA="$(processed_folder "$SMOL" smollm2 "${EXTRA_VIEW_FLAGS[@]}")"
  [ -f "$VIEW_DATA/meta.json" ] || timed data-smollm2-extra-view bash scripts/run-data.sh "$VIEW_DATA" "$SMOL" \
    --input-dir "$REALMIX" "${EXTRA_VIEW_FLAGS[@]}"
  CAUSAL_TRAINING+=("$VIEW_DATA" --served-prompt-cut-from "$CAUSAL_DATA")
fi
! needs encoder || [ -f "$ENCODER_DATA/meta.json" ] || timed data-minilm bash scripts/run-data.sh "$ENCODER_DATA" "$MINILM" --input-dir "$REALMIX" "${ENCODER_DATA_FLAGS[@]}"

train() {  # train NAME COMMAND...: skip when $RUNS/NAME was trained by the same command (the neural runs add
  # --report-to tensorboard); refuse one trained by another, which would otherwise stand in this budget's rows
  local name="$1"; shift
  local record="$RUNS/$name.command" command
  command="$(printf '%q ' "$@")"
  if [ -f "$RUNS/$name/training_summary.json" ]; then
    if [ -f "$record" ] && [ "$(cat "$record")" = "$command" ]; then
      echo "[$DATASET] $name already trained"
      return
    fi
    echo "run-realmix.sh: $RUNS/$name was trained by another command than BUDGET=$BUDGET's ($record has the one" \
      "that trained it, if any); move it away or set RUNS=... to train this recipe's" >&2
    exit 2
  fi
  timed "train-$name" "$@" --output-dir "$RUNS/$name"
  printf '%s\n' "$command" > "$record.tmp" && mv "$record.tmp" "$record"
}
# Each model is evaluated as soon as it is trained, SCM first, so that an interrupted run already holds the headline.
evaluate() {  # evaluate NAME RUN DATA COMMAND...: COMMAND --model-path $RUNS/RUN --data-dir DATA into $OUT/NAME;
  # skipped when $OUT/NAME is newer than the run's checkpoint and records that run and data folder (unless FRESH=1)
  local name="$1" run="$2" data="$3"; shift 3
  if is_current "$OUT/$name/summary.json" "$RUNS/$run/training_summary.json" \
      && evaluated_with "$OUT/$name/summary.json" "$RUNS/$run" "$data"; then
    echo "[$DATASET] $name already evaluated on the current $run checkpoint (FRESH=1 re-evaluates)"
    return
  fi
  timed "eval-$name" "$@" --model-path "$RUNS/$run" --data-dir "$data" --output-dir "$OUT/$name"
}
if needs scm; then
  train scm bash scripts/run-scm.sh --base-model-path "$SMOL" --data-dir "${CAUSAL_TRAINING[@]}" "${CAUSAL_FLAGS[@]}" --report-to tensorboard
  evaluate scm scm "$CAUSAL_DATA" bash scripts/run-scm.sh test
fi
# The lexical floor (TF-IDF + logistic regression, seconds) on the decoded responses of the SmolLM2 models' split.
if needs lexical; then
  train lexical bash scripts/run-lexical.sh --data-dir "$CAUSAL_DATA"
  evaluate lexical-full lexical "$CAUSAL_DATA" bash scripts/run-lexical.sh test --mode full
  evaluate lexical-partial lexical "$CAUSAL_DATA" bash scripts/run-lexical.sh test --mode partial
fi
if needs qwen-full; then
  train qwen-full bash scripts/run-qwen-full.sh --base-model-path "$SMOL" --data-dir "${CAUSAL_TRAINING[@]}" "${CAUSAL_FLAGS[@]}" --report-to tensorboard
  evaluate qwen-full qwen-full "$CAUSAL_DATA" bash scripts/run-qwen-full.sh test
  evaluate qwen-partial qwen-full "$CAUSAL_DATA" bash scripts/run-qwen-partial.sh test
fi
if needs encoder; then
  train encoder bash scripts/run-modernbert-full.sh --base-model-path "$MINILM" --data-dir "$ENCODER_DATA" "${ENCODER_FLAGS[@]}" --report-to tensorboard
  evaluate encoder-full encoder "$ENCODER_DATA" bash scripts/run-modernbert-full.sh test
  evaluate encoder-partial encoder "$ENCODER_DATA" bash scripts/run-modernbert-partial.sh test "${ENCODER_PARTIAL_FLAGS[@]}"
fi
for name in $MODELS; do
  cp "$RUNS/$name/training_summary.json" "$OUT/training-summary-$name.json"
done
# The report covers every evaluation $OUT holds, this run's and those of earlier runs with other MODELS.
evaluations=()
for name in scm qwen-full qwen-partial encoder-full encoder-partial lexical-full lexical-partial; do
  [ -f "$OUT/$name/summary.json" ] && evaluations+=("$OUT/$name")
done
bash scripts/run-report.sh "${evaluations[@]}" --output "$OUT/report.md"
cat "$OUT/report.md"
