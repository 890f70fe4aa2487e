#!/usr/bin/env bash
# GPU benchmark of the project's code paths (python -m bench.benchmark) as ONE device call; results/gpu-bench/README.md
# explains the run and where its files go.
#   bash scripts/run-bench.sh --prepare-deps                      # HERE first: wheels the GPU machine lacks
#   bash scripts/run-bench.sh --gpu-tests --out "$OUT/gpu-bench"   # on the GPU machine: about 7 minutes
#   bash scripts/run-bench.sh --out "$OUT/gpu-bench" --sections answers,stream --stream-models 0.5b
#   bash scripts/run-bench.sh --tiny --out /tmp/bench-tiny         # CPU smoke run, seconds
#
# No virtual environment is needed and nothing is installed: on a machine without .venv the script uses its
# python3 (set PYTHON to override). Pure-Python wheels carried in .bench-deps/ (made by --prepare-deps, pinned to
# requirements.txt) are unpacked into a temporary folder put first on PYTHONPATH: the GPU machine's transformers
# 5.17 cannot import the project's SCMConfig (transformers.configuration_utils.SubConfigSpec is newer) and it has
# no hf-mtask-trainer. --gpu-tests (first argument) runs the fast path's pytest file first (its CUDA-graph test runs
# only on a GPU; log in <out>/pytest.log, at most 60 s). Everything stops after BENCH_TIMEOUT_S seconds (default 420)
# and keeps what it measured; each section also has its own time budget (see python -m bench.benchmark --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPS_DIR="$ROOT/.bench-deps"

pinned() {  # pinned NAME: the version requirements.txt pins
  sed -n "s/^$1==\([^ ]*\).*/\1/p" "$ROOT/requirements.txt" | head -n 1
}

if [ "${1:-}" = "--prepare-deps" ]; then
  transformers_version="$(pinned transformers)"
  if [ -z "$transformers_version" ]; then
    echo "run-bench.sh: requirements.txt pins no transformers version; cannot choose the wheel to carry" >&2
    exit 2
  fi
  mkdir -p "$DEPS_DIR"
  rm -f "$DEPS_DIR"/*.whl
  python3 -m pip download --no-deps --only-binary=:all: -d "$DEPS_DIR" \
    "transformers==$transformers_version" "hf-mtask-trainer==0.0.5"
  # Keep the wheels out of git; the device tool carries them because the run names .bench-deps in `carry`.
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/.bench-deps/" "$exclude" 2>/dev/null || echo "/.bench-deps/" >> "$exclude"
  ls -l "$DEPS_DIR"
  echo "run-bench.sh: ready; run on the GPU machine with carry [\".bench-deps\"] (see results/gpu-bench/README.md)"
  exit 0
fi

if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# Progress bars would fill the device reply's 12,000-character output tail; bench.log has the progress lines.
export TQDM_DISABLE=1
PYTHONPATH_PREFIX=""
if compgen -G "$DEPS_DIR/*.whl" > /dev/null; then
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/scm-bench-site.XXXXXX")"
  for wheel in "$DEPS_DIR"/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$SITE"   # a wheel is a zip of importable files: unpacking is enough
  done
  PYTHONPATH_PREFIX="$SITE:"
  echo "run-bench.sh: using carried wheels: $(cd "$DEPS_DIR" && ls ./*.whl | tr '\n' ' ')"
fi
export PYTHONPATH="$PYTHONPATH_PREFIX$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Fail in seconds, not after minutes of device time, when the project cannot be imported here.
if ! "$PYTHON" -c "import model, train.training, utils.evaluation.scoring, bench.benchmark" 2> /tmp/scm-bench-import.err; then
  cat /tmp/scm-bench-import.err >&2
  echo "run-bench.sh: the project does not import with $("$PYTHON" -c 'import sys; print(sys.executable)'); on the" \
       "GPU machine carry the wheels: run 'bash scripts/run-bench.sh --prepare-deps' here and pass" \
       "carry [\".bench-deps\"] to the device run" >&2
  exit 2
fi
"$PYTHON" -c "import torch, transformers; print('run-bench.sh: python', __import__('sys').executable, '| torch',
  torch.__version__, '| transformers', transformers.__version__, 'from', transformers.__file__, '| cuda',
  torch.cuda.is_available() and torch.cuda.get_device_name(0))"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

ENDS=$((SECONDS + ${BENCH_TIMEOUT_S:-420}))
if [ "${1:-}" = "--gpu-tests" ]; then
  shift
  out_dir="results/gpu-bench"
  previous=""
  for arg in "$@"; do  # the benchmark's --out, so the test log lands beside bench.json
    case "$arg" in --out=*) out_dir="${arg#--out=}" ;; esac
    [ "$previous" = "--out" ] && out_dir="$arg"
    previous="$arg"
  done
  mkdir -p "$out_dir"
  tests_status=0
  timeout --signal=TERM --kill-after=10 60 "$PYTHON" -m pytest tests/model/test_streaming_cuda.py -q -rs \
    -p no:cacheprovider > "$out_dir/pytest.log" 2>&1 || tests_status=$?
  tail -n 5 "$out_dir/pytest.log"
  echo "run-bench.sh: fast-path tests exit status $tests_status (log: $out_dir/pytest.log); the benchmark runs anyway"
fi

left=$((ENDS - SECONDS))
status=0
timeout --signal=TERM --kill-after=20 "$left" "$PYTHON" -m bench.benchmark "$@" || status=$?
if [ "$status" -eq 124 ]; then
  echo "run-bench.sh: stopped at the ${BENCH_TIMEOUT_S:-420} s limit; bench.json holds what was measured" >&2
fi
exit "$status"
