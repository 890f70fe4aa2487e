# The prompt-reading CPU recipe for realmix (BUDGET=prompt-3ep of run-realmix.sh with REALMIX=../shared/data/realmix;
# results/recipe-ablation/README.md, results/realmix-prompt-3ep/README.md). Keeps the last 64 prompt tokens and every
# response token; trains SmolLM2-135M three epochs on all 2,560 training examples with the lower 24 of 30 blocks
# frozen, learning rate 2e-4 decayed by 0.999 per step, validating every 40 steps and keeping the lowest validation
# loss; the frozen blocks run once over the data (--cache-frozen-prefix, exact), kept in .cache/prefix-cache and
# reused by every run on the same backbone whose sequences the cache holds (SCM, the baseline, leave-one-source-out
# folds).
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 64)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 3 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24 --max-length 512
              --eval-steps 40 --save-steps 40 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix-cpu-smollm2-f24")
ENCODER_FLAGS=(--max-length 512 --eval-steps 40 --save-steps 40)
