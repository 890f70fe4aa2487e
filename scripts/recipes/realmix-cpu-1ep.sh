# The CPU recipe with one epoch (the realmix results of 2026-11-29 19:36; the leave-one-source-out folds of the
# neural monitors, whose eight trainings the three-epoch recipe would make a day's work on a CPU).
# shellcheck shell=bash disable=SC2034
REALMIX_CPU_EPOCHS=1
source "$(dirname "${BASH_SOURCE[0]}")/realmix-cpu.sh"
