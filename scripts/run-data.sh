#!/usr/bin/env bash
# Tokenise and label a FineHarm-format folder for one model's tokenizer (the paper's data step).
#
#   bash scripts/run-data.sh OUTPUT_DIR TOKENIZER_PATH [--input-dir DIR] [more flags of utils.data_process]
#
# e.g. bash scripts/run-data.sh scm /path/to/qwen-tokenizer
#      bash scripts/run-data.sh baseline-modernbert /path/to/modernbert-tokenizer --input-dir .cache/fineharm-sample
#      bash scripts/run-data.sh scm-mixed /path/to/qwen-tokenizer --input-dir FineHarm my-fineharm --source-weights 1 2
# The input defaults to the project's FineHarm/ folder (see FineHarm/README.md); several --input-dir folders are
# mixed into one output, --source-weights scaling each one's training split. Relative paths are taken from the
# current directory; `python -m utils.data_process --help` lists every flag.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ "$#" -lt 2 ] || [[ "$1" == -* ]] || [[ "$2" == -* ]]; then
  echo "usage: bash scripts/run-data.sh OUTPUT_DIR TOKENIZER_PATH [--input-dir DIR [DIR ...]] [--source-weights W [W ...]] [--splits train val test] [--limit N] [--num-workers N]" >&2
  echo "  OUTPUT_DIR: folder for train.jsonl/val.jsonl/test.jsonl + meta.json (e.g. scm, baseline-qwen, baseline-modernbert)" >&2
  echo "  TOKENIZER_PATH: tokenizer folder of the model to train (offline defaults: python -m model.assets)" >&2
  exit 2
fi
if [ -f "$ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# No cd: OUTPUT_DIR, TOKENIZER_PATH and --input-dir keep meaning what they mean in the caller's directory.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python -m utils.data_process --output-dir "$1" --tokenizer-path "$2" "${@:3}"
