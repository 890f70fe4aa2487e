# The CPU recipe for realmix, BUDGET=cpu of run-realmix.sh (its default) since 2026-11-30: one epoch on both views of
# every training example, the response alone served (scripts/recipes/realmix-views-1ep.sh says what it is). It kept
# the in-distribution level of the three-epoch prompt-reading recipe (now BUDGET=prompt-3ep) in a third of its
# training, and generalises to held-out attacks far better (results/recipe-ablation/README.md "Both views",
# results/loso/README.md).
# shellcheck shell=bash disable=SC2034
source "$(dirname "${BASH_SOURCE[0]}")/realmix-views-1ep.sh"
