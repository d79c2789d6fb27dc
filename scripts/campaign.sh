#!/usr/bin/env bash
# The long fault campaign: the same test as CI's bounded one (`cargo test --test campaign`),
# over more seeds, every seed run even after a violation, and a summary at the end (steps,
# faults of each kind injected, violations with their seed and minimal sequence).
#
#   scripts/campaign.sh [SEEDS] [STEPS]   # SEEDS: 1..200 or 3,17,42 (default 1..100);
#                                         # STEPS per seed: 1-60 (default 40)
#   scripts/campaign.sh --release ...     # a release build (more steps per minute)
#
# The environment selects what is injected and checked (default: everything), e.g.
#   BROCTLD_CAMPAIGN_FAULTS=all,-setsid BROCTLD_CAMPAIGN_INVARIANTS=all scripts/campaign.sh
# and BROCTLD_CAMPAIGN_SHRINK=N bounds the replays spent shrinking each violation (default 24).
# Output: target/campaign/run.log (everything) and target/campaign/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

profile=()
args=()
for a in "$@"; do
  case "$a" in
    --release) profile=(--release) ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option: $a" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
seeds="${args[0]:-1..100}"
steps="${args[1]:-40}"

out_dir="${CARGO_TARGET_DIR:-target}/campaign"
mkdir -p "$out_dir"
log="$out_dir/run.log"
summary="$out_dir/summary.txt"

echo "campaign: seeds $seeds, $steps steps each; log in $log"
start=$(date +%s)
BROCTLD_CAMPAIGN_SEEDS="$seeds" BROCTLD_CAMPAIGN_STEPS="$steps" BROCTLD_CAMPAIGN_KEEP_GOING=1 \
  cargo test "${profile[@]}" --test campaign -- --nocapture --test-threads=1 >"$log" 2>&1
status=$?
end=$(date +%s)

{
  echo "fault campaign: seeds $seeds, $steps steps per seed, $((end - start)) s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  grep -oE 'campaign: (faults enabled|invariants checked).*' "$log"
  grep -oE 'campaign summary:.*' "$log" || echo "campaign summary: missing (the test did not finish; see $log)"
  echo
  echo "per seed:"
  grep -E '^campaign: seed ' "$log" | sed 's/^campaign: /  /'
  if grep -q '^seed [0-9]* broke' "$log"; then
    echo
    echo "violations (seed, invariant, details, minimal sequence):"
    awk '/^campaign summary:/{exit} /^seed [0-9]+ broke/{p=1} p' "$log"
  fi
} >"$summary"
cat "$summary"
exit "$status"
