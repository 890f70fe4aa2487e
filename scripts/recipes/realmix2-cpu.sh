# The CPU recipe for realmix2 (BUDGET=cpu of run-realmix.sh, whose default data realmix2 is): SmolLM2-135M with the
# lower 24 of its 30 blocks frozen and read through a kept frozen-prefix cache, one epoch on 6,000 of the 10,178
# training responses (the first 6,000 of the shuffled split, every source) cut to 256 tokens, the response alone
# after BOS (--max-prompt-tokens 0, the view the gateway serves), learning rate 2e-4 decayed by 0.999 per step.
# Sized so that SCM trains and is evaluated in at most 90 minutes on 2 CPU cores from scratch, cache included
# (results/realmix2/README.md gives the measured times and the ablation that chose it). The encoder's partial mode
# re-classifies every prefix (n forward passes for n tokens), so it is scored on the first 250 responses of each split.
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --limit-train 6000 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24
              --max-length 256 --eval-steps 125 --save-steps 125 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix2-smollm2-p0-f24")
ENCODER_FLAGS=(--limit-train 6000 --max-length 256 --eval-steps 125 --save-steps 125)
ENCODER_PARTIAL_FLAGS=(--limit 250 --max-length 256)
