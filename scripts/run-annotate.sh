#!/usr/bin/env bash
# Annotate your own prompt/response data into a FineHarm-format folder (sentence and word labels, data card).
#
#   bash scripts/run-annotate.sh IN OUT [flags of utils.annotation.annotate]
#
# e.g. bash scripts/run-annotate.sh my-data.jsonl my-fineharm                       # prompt/response/label JSONL
#      bash scripts/run-annotate.sh rows.csv my-fineharm --preset prompt-response-is_safe
#      bash scripts/run-annotate.sh chats.jsonl my-fineharm --preset messages --judge scm:runs/scm-default
#      bash scripts/run-annotate.sh my-data.jsonl my-fineharm --judge openai:http://127.0.0.1:8000/v1 --judge-model NAME
# then: bash scripts/run-data.sh scm-mine TOKENIZER_PATH --input-dir my-fineharm [FineHarm --source-weights 1 1]
# `python -m utils.annotation.annotate --help` lists every flag; OUT/README.md is the data card.
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ "$#" -lt 2 ] || [[ "$1" == -* ]] || [[ "$2" == -* ]]; then
  echo "usage: bash scripts/run-annotate.sh IN OUT [--preset NAME] [--judge given|propagate|scm:CKPT|openai:URL] [--on-error fail|skip] ..." >&2
  echo "  IN: .jsonl / .json / .csv / .tsv / .parquet file or a FineHarm-format folder; OUT: the FineHarm-format folder to write" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec python -m utils.annotation.annotate --input "$1" --output-dir "$2" "${@:3}"
