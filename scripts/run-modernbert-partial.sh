#!/usr/bin/env bash
# Encoder partial detection: every response prefix re-classified separately (an encoder is bidirectional, so
# there is no one-pass shortcut), with the delay-k rule. Only `test`: it uses the run-modernbert-full.sh model.
#   bash scripts/run-modernbert-partial.sh test --model-path baseline_modernbert-full --data-dir baseline_modernbert --output-dir metrics/modernbert-partial
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ "${1:-}" != "test" ]; then
  echo "usage: bash scripts/run-modernbert-partial.sh test --model-path CKPT --data-dir DIR --output-dir DIR" >&2
  echo "(partial detection reuses the checkpoint trained by scripts/run-modernbert-full.sh)" >&2
  exit 2
fi
shift
exec python -m test.test_modernbert_partial "$@"
