#!/usr/bin/env bash
# Shared by the run-*.sh drivers: repository root, the project's .venv, offline Hugging Face settings, and helpers
# that fill in the embedded defaults (SmolLM2-135M / MiniLM and the project's own FineHarm-format sample).
#
# The drivers stay in the folder the user runs them from, so every path the user types means what it means there
# (`bash ../scm/scripts/run-stream.sh --input pairs.jsonl` reads ./pairs.jsonl). The project's packages are found
# through PYTHONPATH, and PYTHONSAFEPATH keeps a folder of the user's (say ./test or ./utils) from shadowing them.
# The drivers' own defaults live in the repository (runs/scm-default, .cache/...): `repo_path` names them relative
# to the user's folder.
set -euo pipefail
SCM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$SCM_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$SCM_ROOT/.venv/bin/activate"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$SCM_ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1

# repo_path RELATIVE: the repository's RELATIVE path as seen from the current folder (runs/scm-default at the
# repository root, ../scm/runs/scm-default from a sibling folder), so outputs never name a machine's absolute path.
repo_path() {
  python -c 'import os, sys; print(os.path.relpath(os.path.join(sys.argv[1], sys.argv[2])))' "$SCM_ROOT" "$1"
}

# user_path PATH: PATH made absolute from the current folder (for a driver that then works from the repository root).
user_path() {
  python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"
}

# inside_repo PATH: PATH relative to the current folder when it lies inside it, else PATH as it is; after enter_repo
# it keeps the outputs a driver writes under the repository from recording this machine's absolute paths.
inside_repo() {
  python -c 'import os, sys; r = os.path.relpath(sys.argv[1]); print(sys.argv[1] if r.startswith("..") else r)' "$1"
}

# enter_repo VAR...: for a driver that chains other drivers by their repository paths (bash scripts/run-data.sh ...):
# the named variables, when the caller set them, are made absolute from the caller's folder first; then the driver
# works from the repository root, where its own defaults (results/..., runs/...) are.
enter_repo() {
  local name
  for name in "$@"; do
    if [ -n "${!name:-}" ]; then printf -v "$name" '%s' "$(user_path "${!name}")"; fi
  done
  cd "$SCM_ROOT"
}

# has_flag NAME ARGS...: true when --NAME, --NAME=..., or its underscore spelling is among ARGS.
has_flag() {
  local name="$1"; shift
  local alt="${name//-/_}"
  for arg in "$@"; do
    case "$arg" in
      "--$name"|"--$name="*|"--$alt"|"--$alt="*) return 0 ;;
    esac
  done
  return 1
}

# timed_step FILE NAME COMMAND...: run COMMAND and record its wall time as NAME's row of the tab-separated FILE,
# replacing NAME's earlier row and keeping the others (a driver that skips finished steps keeps their times).
timed_step() {
  local file="$1" name="$2"; shift 2
  local start=$SECONDS
  "$@"
  local kept=""
  [ -f "$file" ] && kept="$(grep -vP "^\Q$name\E\t" "$file" || true)"
  { [ -n "$kept" ] && printf '%s\n' "$kept"; printf '%s\t%s\n' "$name" "$((SECONDS - start))"; } > "$file.tmp"
  mv "$file.tmp" "$file"
}

# is_current OUTPUT INPUT: true when OUTPUT (an evaluation's summary.json) is newer than INPUT (the model's
# training_summary.json) and FRESH is unset: the drivers skip such an evaluation (FRESH=1 redoes every one).
is_current() {
  [ -z "${FRESH:-}" ] && [ "$1" -nt "$2" ]
}

# evaluated_with SUMMARY MODEL DATA: true when the evaluation SUMMARY (its summary.json) records MODEL and DATA as
# the model and processed folder it read (compared as absolute paths from the current folder), so a driver never
# keeps another model's evaluation because it happens to be newer.
evaluated_with() {
  python - "$@" <<'PY'
import json, os, sys
summary, model, data = sys.argv[1:4]
recorded = json.load(open(summary, encoding="utf-8"))
same = lambda a, b: os.path.realpath(a) == os.path.realpath(b)  # noqa: E731
sys.exit(0 if same(recorded["model"]["path"], model) and same(recorded["data"]["data_dir"], data) else 1)
PY
}

# flags_tag ARGS...: a short fingerprint of ARGS (a data folder and tokenizer with their run-data.sh flags): the
# drivers name processed folders after it, so a recipe with other flags never reuses another's folder.
flags_tag() { printf '%s\n' "$@" | sha1sum | cut -c1-8; }

asset_path() {  # asset_path smollm2|minilm|qwen_tokenizer
  python -c "import model.assets as a; print({'smollm2': a.smollm2_path, 'minilm': a.minilm_path, 'qwen_tokenizer': a.qwen_tokenizer_path}['$1']())"
}

# sample_data_for TOKENIZER_PATH: prints a processed copy of the project's own sample for that tokenizer,
# generating the sample and processing it the first time.
sample_data_for() {
  local tokenizer="$1"
  local sample out
  sample="$(repo_path .cache/fineharm-sample)"
  out="$(repo_path ".cache/data/sample-$(basename "$tokenizer")")"
  if [ ! -f "$sample/test_new.json" ]; then
    python -m utils.data.sample_data --output-dir "$sample" >&2
  fi
  if [ ! -f "$out/meta.json" ]; then
    python -m utils.data_process --output-dir "$out" --tokenizer-path "$tokenizer" --input-dir "$sample" >&2
  fi
  echo "$out"
}

# train_with_defaults SCRIPT ASSET DEFAULT_OUTPUT_DIR MODULE_ARGS... -- USER_ARGS...
# Runs `python -m MODULE_ARGS... USER_ARGS...`, first filling in the embedded defaults the user left out: the
# backbone (ASSET: smollm2 or minilm), the project's sample processed for it, and DEFAULT_OUTPUT_DIR (a path in the
# repository, e.g. runs/scm-default).
train_with_defaults() {
  local script="$1" asset="$2" default_out="$3"; shift 3
  local module=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do module+=("$1"); shift; done
  [ "$#" -gt 0 ] && shift
  local extra=()
  if ! has_flag base-model-path "$@"; then
    local base
    base="$(asset_path "$asset")"
    extra+=(--base-model-path "$base")
    has_flag data-dir "$@" || extra+=(--data-dir "$(sample_data_for "$base")")
  fi
  has_flag data-dir "$@" "${extra[@]}" || { echo "$script: --data-dir is required with --base-model-path" >&2; exit 2; }
  has_flag output-dir "$@" || extra+=(--output-dir "$(repo_path "$default_out")")
  python -m "${module[@]}" "${extra[@]}" "$@"
}
