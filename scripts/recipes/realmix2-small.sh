# The realmix2 CPU recipe at a third of its training data: the cpu budget's flags (SmolLM2-135M, lower 24 of 30
# blocks frozen behind the kept frozen-prefix cache, one epoch, responses cut to 256 tokens, the response alone after
# BOS, learning rate 2e-4 decayed by 0.999 per step) on the first 2,000 training responses instead of 6,000. The
# budget of the leave-one-source-out folds (RECIPE= of run-loso.sh: four SCM trainings and evaluations fit beside the
# headline runs on 2 cores) and the recipe ablation's smallest data-size arm.
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 64)
CAUSAL_FLAGS=(--num-train-epochs 1 --limit-train 2000 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24
              --max-length 256 --eval-steps 125 --save-steps 125 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix2-smollm2-p0-f24")
ENCODER_FLAGS=(--limit-train 2000 --max-length 256 --eval-steps 125 --save-steps 125)
ENCODER_PARTIAL_FLAGS=(--limit 250 --max-length 256)
