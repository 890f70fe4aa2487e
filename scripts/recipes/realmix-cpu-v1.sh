# The first reduced budget (first 1,280 training examples, one epoch, learning rate 1e-4 decayed by 0.99 per step,
# the lower 24 blocks frozen, no cache), which the results before the recipe ablation used.
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 64)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --limit-train 1280 --freeze-layers 24 --max-length 512 --eval-steps 40 --save-steps 40)
ENCODER_FLAGS=(--max-length 512 --eval-steps 40 --save-steps 40)
