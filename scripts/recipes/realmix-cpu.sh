# The CPU recipe for realmix (BUDGET=cpu of run-realmix.sh with REALMIX=../shared/data/realmix): one epoch on both
# views of every training example in one run, the response alone served. The served view is the response alone after
# BOS (--max-prompt-tokens 0: the checkpoint records it and the streaming runtime serves the response without the
# prompt); the extra view (EXTRA_VIEW_FLAGS) is the same response after the last 64 prompt tokens. 5,120 sequences,
# 320 steps: SmolLM2-135M with the lower 24 of its 30 blocks frozen and read through a kept frozen-prefix cache,
# learning rate 2e-4 decayed by 0.999 per step, validating every 80 steps and keeping the lowest validation loss. The
# monitor learns from the prompt in training and does not depend on it when served (why this recipe:
# results/recipe-ablation/README.md "Both views", results/loso/README.md "Both views").
# Its frozen-prefix cache holds both views' sequences: `python -m train.prefix_cache_merge --caches
# .cache/prefix-cache/realmix-cpu-smollm2-f24 .cache/prefix-cache/realmix-cpu-smollm2-p0-f24 --output-dir
# .cache/prefix-cache/realmix-cpu-smollm2-views-f24` makes it in seconds from the caches of prompt-3ep and
# response-1ep; without them the first run builds it (the frozen blocks over 888,138 tokens).
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
EXTRA_VIEW_FLAGS=(--max-prompt-tokens 64)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24 --max-length 512
              --eval-steps 80 --save-steps 80 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix-cpu-smollm2-views-f24")
ENCODER_FLAGS=(--max-length 512 --eval-steps 40 --save-steps 40)
