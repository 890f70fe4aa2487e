#!/usr/bin/env bash
# Serve the moderated OpenAI-compatible gateway (chat/completions, completions, moderations, /metrics, the chat page).
#   bash scripts/run-serve.sh                                           # runs/scm-default + embedded SmolLM2-135M, 127.0.0.1:8000
#   bash scripts/run-serve.sh --model-path CKPT --theta 0.7 --k 3 --port 8000
#   bash scripts/run-serve.sh --model-path CKPT --generator /path/to/causal-lm
#   bash scripts/run-serve.sh --model-path CKPT --upstream http://127.0.0.1:8001/v1   # in front of vLLM, llama.cpp, ...
#   bash scripts/run-serve.sh --model-path CKPT --operating-point budget   # the false-stop budget's point (docs/OPERATING-POINT.md)
# Without --model-path it serves runs/scm-default (what `bash scripts/run-scm.sh` trains with no flags). With no
# --theta/--k it serves the point CKPT/operating_point.json records (written by `bash scripts/run-scm.sh test ...`),
# else the training default with a warning; the start-up log and /health say which.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
# The repository's default, named from the folder the user runs this in (paths the user types stay theirs).
extra=()
has_flag model-path "$@" || extra+=(--model-path "$(repo_path runs/scm-default)")
exec python -m serve.gateway "${extra[@]}" "$@"
