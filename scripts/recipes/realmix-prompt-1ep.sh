# The prompt-reading CPU recipe with one epoch (BUDGET=cpu-1ep until 2026-11-30): the realmix results of 2026-11-29
# 19:36 and the leave-one-source-out folds of the neural monitors, whose eight trainings the three-epoch recipe
# would make a day's work on a CPU.
# shellcheck shell=bash disable=SC2034
REALMIX_PROMPT_EPOCHS=1
source "$(dirname "${BASH_SOURCE[0]}")/realmix-prompt-3ep.sh"
