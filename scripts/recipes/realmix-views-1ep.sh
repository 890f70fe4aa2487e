# Both views of every realmix example in one training run (BUDGET=cpu, the default, sources this file): the response alone after BOS (--max-prompt-tokens 0,
# the served view: the checkpoint records it and the streaming runtime serves the response without the prompt) and
# the same response after the last 64 prompt tokens (EXTRA_VIEW_FLAGS), one epoch of each (5,120 sequences, 320
# steps), otherwise the flags of prompt-1ep: the monitor learns from the prompt in training and does not depend on it
# when served (measured in results/recipe-ablation/README.md and results/loso/README.md).
# Its frozen-prefix cache holds both views' sequences: `python -m train.prefix_cache_merge --caches
# .cache/prefix-cache/realmix-cpu-smollm2-f24 .cache/prefix-cache/realmix-cpu-smollm2-p0-f24 --output-dir
# .cache/prefix-cache/realmix-cpu-smollm2-views-f24` makes it from the cpu and response-1ep caches in seconds;
# without them the first run builds it (the frozen blocks over 888,138 tokens).
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
EXTRA_VIEW_FLAGS=(--max-prompt-tokens 64)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24 --max-length 512
              --eval-steps 80 --save-steps 80 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix-cpu-smollm2-views-f24")
ENCODER_FLAGS=(--max-length 512 --eval-steps 40 --save-steps 40)
