# The realmix2 CPU recipe on every training response: the cpu budget's flags (SmolLM2-135M, lower 24 of 30 blocks
# frozen behind the kept frozen-prefix cache, one epoch, responses cut to 256 tokens, the response alone after BOS,
# learning rate 2e-4 decayed by 0.999 per step) without --limit-train, i.e. all 10,178 training responses instead of
# the first 6,000: the recipe ablation's data-size arm (results/realmix2/README.md). Its cache holds every training
# and validation sequence, so every other realmix2 recipe with these data flags and every leave-one-source-out fold
# reads a subset of it.
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24
              --max-length 256 --eval-steps 125 --save-steps 125 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix2-smollm2-p0-f24")
ENCODER_FLAGS=(--max-length 256 --eval-steps 125 --save-steps 125)
ENCODER_PARTIAL_FLAGS=(--limit 250 --max-length 256)
