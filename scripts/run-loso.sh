#!/usr/bin/env bash
# Leave-one-source-out (the data is never copied into the project): for each source, train without it
# (in-distribution validation chooses the leak-free operating point) and test on its responses; one table per run in
# $OUT/loso.md (utils/evaluation/loso.py says how sources with one class are handled).
#
#   bash scripts/run-loso.sh                      # realmix2 (the default data): its four sources, the lexical floor
#   RECIPE=scripts/recipes/realmix2-small.sh MODELS="lexical scm" bash scripts/run-loso.sh
#   REALMIX=../shared/data/realmix bash scripts/run-loso.sh   # realmix: each JailbreakBench attack and XSTest model
#   SOURCES=jbb-GCG,xstest-gpt4 MODELS=scm RECIPE=... RUNS=runs/loso-try OUT=runs/loso-try bash scripts/run-loso.sh
#
# LEVEL: what one held-out source is: "source" (meta.source: realmix2's cipherchat, gptfuzz, jbb, xstest; the
# default on realmix2) or "model" (source with its attack or model, e.g. jbb-GCG, xstest-gpt4: realmix's 11, its
# default). TEST_SPLITS: which original splits of the held-out source are its test (default on realmix2: test, as
# GPTFuzz alone holds 5,877 responses; on realmix: train,val,test, every record).
# RECIPE names a bash file setting the arrays that run-realmix.sh's BUDGET recipes (scripts/recipes/*.sh) set, so the
# neural models train as they do there; with the CPU recipes every fold reuses the frozen-prefix cache of the whole
# run (a fold's training and validation sequences are a subset of it when that cache holds every training and
# validation sequence, as the realmix2-all-1ep and realmix-cpu runs' do): DATA_FLAGS / ENCODER_DATA_FLAGS
# (scripts/run-data.sh flags for SmolLM2 / MiniLM), CAUSAL_FLAGS (run-scm.sh and run-qwen-full.sh training flags),
# ENCODER_FLAGS (run-modernbert-full.sh training flags), e.g.
#     DATA_FLAGS=(--max-prompt-tokens 64); ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
#     CAUSAL_FLAGS=(--num-train-epochs 1 --freeze-layers 24 --max-length 512); ENCODER_FLAGS=(--max-length 512)
# A recipe may also set EXTRA_VIEW_FLAGS (run-data.sh flags of a second view of the same examples, e.g.
# (--max-prompt-tokens 64) beside DATA_FLAGS=(--max-prompt-tokens 0)): the causal models then train on both views
# and are served, and evaluated, on DATA_FLAGS' view (--served-prompt-cut-from).
# The neural MODELS need one; the lexical floor needs none (it reads only the responses, which no flag changes).
# MODELS: lexical (full + partial), scm (token and holistic partial, full), qwen-full (full + partial), encoder
# (full; partial too with ENCODER_PARTIAL=1: every prefix re-classified, slow on a CPU).
# Folders, processed data, models and evaluations go to $RUNS (default runs/loso on realmix, runs/loso-realmix2 on
# realmix2; use a new one for another recipe,
# as finished steps are skipped: processed data, trained models, and evaluations newer than their model, unless
# FRESH=1; SOURCES=... runs only those sources and keeps the others' models and evaluations, so the table covers
# every source evaluated in $RUNS); $OUT (default results/loso on realmix, results/realmix2/loso on realmix2) gets
# loso.md, loso.json, timings.tsv (a row per step run, earlier runs' rows kept) and each
# evaluation's summary.json and report.md. SMOL / MINILM override the backbones (tests use tiny ones).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
enter_repo REALMIX OUT RUNS RECIPE  # it chains the other drivers by their repository paths
REALMIX="${REALMIX:-$SCM_ROOT/../shared/data/realmix2}"
if [ "$(basename "$REALMIX")" = realmix ]; then  # realmix keeps the folders, units and test of its committed table
  OUT="${OUT:-results/loso}" RUNS="${RUNS:-runs/loso}" LEVEL="${LEVEL:-model}" TEST_SPLITS="${TEST_SPLITS:-train,val,test}"
else
  DATASET="$(basename "$REALMIX")"
  OUT="${OUT:-results/$DATASET/loso}" RUNS="${RUNS:-runs/loso-$DATASET}" LEVEL="${LEVEL:-source}"
  TEST_SPLITS="${TEST_SPLITS:-test}"
fi
MODELS="${MODELS:-lexical}"
SOURCES="${SOURCES:-}"
ENCODER_PARTIAL="${ENCODER_PARTIAL:-0}"
DATA_FLAGS=() ENCODER_DATA_FLAGS=() CAUSAL_FLAGS=() ENCODER_FLAGS=() EXTRA_VIEW_FLAGS=()
[ -f "$REALMIX/test_new.json" ] || { echo "run-loso.sh: no FineHarm-format data at $REALMIX (no test_new.json; set REALMIX=...)" >&2; exit 2; }
for model in $MODELS; do
  case "$model" in
    lexical) ;;
    scm|qwen-full|encoder)
      [ -n "${RECIPE:-}" ] || { echo "run-loso.sh: MODELS=$model needs RECIPE=FILE (the training flags; see the header)" >&2; exit 2; } ;;
    *) echo "run-loso.sh: unknown model $model in MODELS (lexical, scm, qwen-full, encoder)" >&2; exit 2 ;;
  esac
done
if [ -n "${RECIPE:-}" ]; then
  [ -f "$RECIPE" ] || { echo "run-loso.sh: RECIPE file $RECIPE not found" >&2; exit 2; }
  # shellcheck disable=SC1090
  source "$RECIPE"
fi
needs() { [[ " $MODELS " == *" $1 "* ]]; }
# Processed folders are named after their run-data.sh flags (flags_tag), so a recipe with other flags never reuses them.

mkdir -p "$OUT"
timed() { timed_step "$OUT/timings.tsv" "$@"; }  # timed NAME COMMAND...
python -m utils.evaluation.loso build --input-dir "$REALMIX" --output-dir "$RUNS/folders" --level "$LEVEL" \
  --test-splits "$TEST_SPLITS" ${SOURCES:+--sources "$SOURCES"}
if needs lexical || needs scm || needs qwen-full; then SMOL="${SMOL:-$(asset_path smollm2)}"; fi
if needs encoder; then MINILM="${MINILM:-$(asset_path minilm)}"; fi

evaluate() {  # evaluate SOURCE RUN MODEL COMMAND...: one evaluation into $RUNS/eval/SOURCE/RUN, keep its summary;
  # skipped when that summary is newer than MODEL's training (FRESH=1 re-evaluates)
  local source="$1" run="$2" model="$3"; shift 3
  if is_current "$RUNS/eval/$source/$run/summary.json" "$RUNS/models/$source/$model/training_summary.json"; then
    echo "[loso] $source/$run already evaluated on the current $model model (FRESH=1 re-evaluates)" >&2
  else
    timed "$source/eval-$run" "$@" --output-dir "$RUNS/eval/$source/$run"
  fi
  mkdir -p "$OUT/$source/$run"
  cp "$RUNS/eval/$source/$run/summary.json" "$RUNS/eval/$source/$run/report.md" "$OUT/$source/$run/"
}
train() {  # train SOURCE NAME COMMAND...: skip when already trained
  local source="$1" name="$2"; shift 2
  [ -f "$RUNS/models/$source/$name/training_summary.json" ] && return
  timed "$source/train-$name" "$@" --output-dir "$RUNS/models/$source/$name"
}

for source in $(python -m utils.evaluation.loso list --folders "$RUNS/folders"); do
  echo "[loso] held out: $source" >&2
  causal="$RUNS/data/$source-smollm2-$(flags_tag "${DATA_FLAGS[@]}")"
  encoder="$RUNS/data/$source-minilm-$(flags_tag "${ENCODER_DATA_FLAGS[@]}")"
  if needs lexical || needs scm || needs qwen-full; then
    [ -f "$causal/meta.json" ] || timed "$source/data-smollm2" bash scripts/run-data.sh "$causal" "$SMOL" \
      --input-dir "$RUNS/folders/$source" "${DATA_FLAGS[@]}"
  fi
  causal_training=("$causal")  # run-scm.sh / run-qwen-full.sh --data-dir: the served view, then any extra view
  if [ "${#EXTRA_VIEW_FLAGS[@]}" -gt 0 ] && { needs scm || needs qwen-full; }; then
    view="$RUNS/data/$source-smollm2-$(flags_tag "${EXTRA_VIEW_FLAGS[@]}")"
    [ -f "$view/meta.json" ] || timed "$source/data-smollm2-extra-view" bash scripts/run-data.sh "$view" "$SMOL" \
      --input-dir "$RUNS/folders/$source" "${EXTRA_VIEW_FLAGS[@]}"
    causal_training+=("$view" --served-prompt-cut-from "$causal")
  fi
  if needs encoder; then
    [ -f "$encoder/meta.json" ] || timed "$source/data-minilm" bash scripts/run-data.sh "$encoder" "$MINILM" \
      --input-dir "$RUNS/folders/$source" "${ENCODER_DATA_FLAGS[@]}"
  fi
  if needs lexical; then
    train "$source" lexical bash scripts/run-lexical.sh --data-dir "$causal"
    evaluate "$source" lexical-full lexical bash scripts/run-lexical.sh test --mode full --model-path "$RUNS/models/$source/lexical" --data-dir "$causal"
    evaluate "$source" lexical-partial lexical bash scripts/run-lexical.sh test --mode partial --model-path "$RUNS/models/$source/lexical" --data-dir "$causal"
  fi
  if needs scm; then
    train "$source" scm bash scripts/run-scm.sh --base-model-path "$SMOL" --data-dir "${causal_training[@]}" "${CAUSAL_FLAGS[@]}"
    evaluate "$source" scm scm bash scripts/run-scm.sh test --model-path "$RUNS/models/$source/scm" --data-dir "$causal"
  fi
  if needs qwen-full; then
    train "$source" qwen-full bash scripts/run-qwen-full.sh --base-model-path "$SMOL" --data-dir "${causal_training[@]}" "${CAUSAL_FLAGS[@]}"
    evaluate "$source" qwen-full qwen-full bash scripts/run-qwen-full.sh test --model-path "$RUNS/models/$source/qwen-full" --data-dir "$causal"
    evaluate "$source" qwen-partial qwen-full bash scripts/run-qwen-partial.sh test --model-path "$RUNS/models/$source/qwen-full" --data-dir "$causal"
  fi
  if needs encoder; then
    train "$source" encoder bash scripts/run-modernbert-full.sh --base-model-path "$MINILM" --data-dir "$encoder" "${ENCODER_FLAGS[@]}"
    evaluate "$source" encoder-full encoder bash scripts/run-modernbert-full.sh test --model-path "$RUNS/models/$source/encoder" --data-dir "$encoder"
    if [ "$ENCODER_PARTIAL" = 1 ]; then
      evaluate "$source" encoder-partial encoder bash scripts/run-modernbert-partial.sh test --model-path "$RUNS/models/$source/encoder" --data-dir "$encoder"
    fi
  fi
done
python -m utils.evaluation.loso table --runs-dir "$RUNS/eval" --output-dir "$OUT" --folders "$RUNS/folders"
