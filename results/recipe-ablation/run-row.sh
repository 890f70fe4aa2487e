#!/usr/bin/env bash
# One row of the recipe ablation: train SCM on realmix with the given flags, evaluate it on val, record the wall
# time and the machine's load while it trained.
#
#   bash results/recipe-ablation/run-row.sh NAME DATA_DIR [TRAINING FLAGS...]
#   bash results/recipe-ablation/run-row.sh NAME@STEP DATA_DIR     # evaluate NAME's checkpoint-STEP only
#
# Writes runs/recipe/NAME (checkpoint), runs/recipe/eval-NAME (val predictions, summary.json) and
# runs/recipe/logs/NAME.STAGE.{log,load,time} and one line per stage in runs/recipe/times.tsv: NAME, stage, wall
# seconds, CPU seconds (user + system of the whole command), mean 1-minute load average (sampled every 30 s). The
# machine is shared, so wall time depends on the load; CPU seconds hardly do (about 2x the wall time of an idle
# 2-core machine when both threads are busy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
name="$1" data="$2"; shift 2
runs=runs/recipe
mkdir -p "$runs/logs"
smol="$(.venv/bin/python -c 'import model.assets as a; print(a.smollm2_path())')"

stage() {  # stage STAGE COMMAND...: run it, sampling the load average, and append its time to times.tsv
  local stage="$1"; shift
  local load="$runs/logs/$name.$stage.load" timing="$runs/logs/$name.$stage.time" start=$SECONDS
  : > "$load"
  ( while true; do cut -d' ' -f1 /proc/loadavg >> "$load"; sleep 30; done ) &
  local sampler=$!
  /usr/bin/time -f '%U %S' -o "$timing" "$@" > "$runs/logs/$name.$stage.log" 2>&1 \
    || { kill "$sampler"; echo "$name $stage failed" >&2; exit 1; }
  kill "$sampler"
  local mean cpu
  mean="$(awk '{ s += $1 } END { if (NR) printf "%.1f", s / NR }' "$load")"
  cpu="$(awk '{ printf "%.0f", $1 + $2 }' "$timing")"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$stage" "$((SECONDS - start))" "$cpu" "$mean" >> "$runs/times.tsv"
}

if [[ "$name" == *@* ]]; then  # an intermediate checkpoint of an earlier row: it gets the run's tokenizer files
  ckpt="$runs/${name%@*}/checkpoint-${name#*@}"
  [ -f "$ckpt/config.json" ] || { echo "run-row.sh: no $ckpt" >&2; exit 2; }
  cp "$runs/${name%@*}"/tokenizer* "$runs/${name%@*}"/special_tokens_map.json "$ckpt"/ 2>/dev/null || true
  stage eval bash scripts/run-scm.sh test --model-path "$ckpt" --data-dir "$data" --output-dir "$runs/eval-$name" \
    --splits val
  exit 0
fi
[ -f "$runs/$name/training_summary.json" ] || stage train bash scripts/run-scm.sh --base-model-path "$smol" \
  --data-dir "$data" --output-dir "$runs/$name" --report-to tensorboard "$@"
stage eval bash scripts/run-scm.sh test --model-path "$runs/$name" --data-dir "$data" \
  --output-dir "$runs/eval-$name" --splits val
