# The paper's budget on realmix2 (BUDGET=full of run-realmix.sh, whose default data realmix2 is): 3 epochs, whole
# prompts, every block trained, up to 4,096 tokens, every response of each split evaluated: a GPU run.
# shellcheck shell=bash disable=SC2034
DATA_FLAGS=()
# MiniLM has 512 positions (ModernBERT, the paper's encoder, has 8,192): keep its inputs within them.
ENCODER_DATA_FLAGS=(--max-prompt-tokens 192)
CAUSAL_FLAGS=(--max-length 4096)
ENCODER_FLAGS=(--max-length 512)
