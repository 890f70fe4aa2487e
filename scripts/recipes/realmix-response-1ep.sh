# One epoch on the response alone, on realmix (BUDGET=response-1ep of run-realmix.sh with
# REALMIX=../shared/data/realmix): prompt-3ep's flags with one epoch, but the data keep no prompt token
# (--max-prompt-tokens 0: BOS, then the response, as the lexical floor reads it), so the monitor cannot lean on the
# prompt's style. A probe of why SCM generalises worse than the floor to unseen attacks
# (results/recipe-ablation/README.md, results/loso/README.md); trained checkpoints record the cut, and the streaming
# runtime serves them the response after BOS alone. Its frozen-prefix cache is its own (other sequences than
# prompt-3ep's).
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=(--max-prompt-tokens 0)
ENCODER_DATA_FLAGS=(--max-prompt-tokens 0)
CAUSAL_FLAGS=(--num-train-epochs 1 --learning-rate 2e-4 --lr-decay 0.999 --freeze-layers 24 --max-length 512
              --eval-steps 40 --save-steps 40 --cache-frozen-prefix
              --prefix-cache-dir "$SCM_ROOT/.cache/prefix-cache/realmix-cpu-smollm2-p0-f24")
ENCODER_FLAGS=(--max-length 512 --eval-steps 40 --save-steps 40)
