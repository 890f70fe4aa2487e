#!/usr/bin/env bash
# From a fresh clone to a trained, evaluated monitor on the embedded default, offline, on a CPU:
#   1. set-up (.venv, pinned packages, offline assets: SmolLM2-135M-Instruct, all-MiniLM-L6-v2, Qwen2.5 tokenizer);
#   2. the project's own FineHarm-format sample, processed for each tokenizer;
#   3. training: SCM and the full-detection baseline on SmolLM2, the encoder baseline on MiniLM;
#   4. evaluation: SCM* (token and holistic scorers), full and partial baselines; a Table-2-style report.
# Re-running skips finished steps (training resumes from checkpoints; delete runs/ to start over).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/_common.sh

SMOL="$(asset_path smollm2)"
MINILM="$(asset_path minilm)"
CAUSAL_DATA="$(sample_data_for "$SMOL")"
ENCODER_DATA="$(sample_data_for "$MINILM")"
RUNS=runs
# The paper's recipe (3 epochs, batch 8 x 2, lr 1e-4) with the lower 24 of SmolLM2's 30 blocks frozen, so that the
# two causal models train in a few CPU minutes each; drop QUICK_FLAGS for full fine-tuning.
QUICK_FLAGS=(--freeze-layers 24)

train_once() {  # train_once OUTPUT_DIR COMMAND...: skip when the final model already exists
  local out="$1"; shift
  if [ -f "$out/training_summary.json" ]; then
    echo "[quickstart] $out already trained"
  else
    echo "[quickstart] training $out"
    "$@" --output-dir "$out"
  fi
}

train_once "$RUNS/scm-default" bash scripts/run-scm.sh --base-model-path "$SMOL" --data-dir "$CAUSAL_DATA" "${QUICK_FLAGS[@]}"
train_once "$RUNS/qwen-full-default" bash scripts/run-qwen-full.sh --base-model-path "$SMOL" --data-dir "$CAUSAL_DATA" "${QUICK_FLAGS[@]}"
train_once "$RUNS/encoder-default" bash scripts/run-modernbert-full.sh --base-model-path "$MINILM" --data-dir "$ENCODER_DATA"

echo "[quickstart] evaluating"
bash scripts/run-scm.sh test --model-path "$RUNS/scm-default" --data-dir "$CAUSAL_DATA" --output-dir "$RUNS/eval/scm"
bash scripts/run-qwen-full.sh test --model-path "$RUNS/qwen-full-default" --data-dir "$CAUSAL_DATA" --output-dir "$RUNS/eval/qwen-full"
bash scripts/run-qwen-partial.sh test --model-path "$RUNS/qwen-full-default" --data-dir "$CAUSAL_DATA" --output-dir "$RUNS/eval/qwen-partial"
bash scripts/run-modernbert-full.sh test --model-path "$RUNS/encoder-default" --data-dir "$ENCODER_DATA" --output-dir "$RUNS/eval/encoder-full"
bash scripts/run-modernbert-partial.sh test --model-path "$RUNS/encoder-default" --data-dir "$ENCODER_DATA" --output-dir "$RUNS/eval/encoder-partial"

bash scripts/run-report.sh "$RUNS/eval/scm" "$RUNS/eval/qwen-full" "$RUNS/eval/qwen-partial" \
  "$RUNS/eval/encoder-full" "$RUNS/eval/encoder-partial" --output "$RUNS/eval/report.md"
echo
cat "$RUNS/eval/report.md"
