#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), then run the fast test tier. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tier or `bash scripts/test.sh -m ""` for everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
python -m pytest "$@"
