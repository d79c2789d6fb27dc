#!/usr/bin/env bash
# The full-count reliability run: the same test binaries CI runs (tests/fault_*.rs,
# tests/fuzz_*.rs, tests/hygiene_*.rs), with the counts the issue asks for instead of CI's small
# ones. Prints every FIGURE line the tests emit and a summary table for docs/reliability.md.
#
#   scripts/reliability.sh               # full counts
#   scripts/reliability.sh --ci          # CI's counts (what `cargo test` runs)
#   scripts/reliability.sh --known-bugs  # also run the #[ignore = "bug: ..."] tests (they fail
#                                        # until the bugs are fixed) and list the outcome
#
# Any count can be overridden from the environment, e.g. BROCTLD_FAULT_KILLS=100. Random
# choices come from BROCTLD_FAULT_SEED when set (each test prints the seed it used).
set -uo pipefail
cd "$(dirname "$0")/.."

ci=0
known=0
for a in "$@"; do
  case "$a" in
    --ci) ci=1 ;;
    --known-bugs) known=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $a" >&2; exit 2 ;;
  esac
done

if [ "$ci" = 0 ]; then
  export BROCTLD_FAULT_KILLS="${BROCTLD_FAULT_KILLS:-20}"
  export BROCTLD_GAP_KILLS="${BROCTLD_GAP_KILLS:-200}"
  export BROCTLD_FAULT_EXTRA_NODES="${BROCTLD_FAULT_EXTRA_NODES:-50}"
  export BROCTLD_FAULT_UPGRADES="${BROCTLD_FAULT_UPGRADES:-10}"
  export BROCTLD_FAULT_UPGRADE_NODES="${BROCTLD_FAULT_UPGRADE_NODES:-200}"
  export BROCTLD_FAULT_MAIN_COMMANDS="${BROCTLD_FAULT_MAIN_COMMANDS:-500}"
  export BROCTLD_HYGIENE_RESTARTS="${BROCTLD_HYGIENE_RESTARTS:-1000}"
  export BROCTLD_HYGIENE_FAILERS="${BROCTLD_HYGIENE_FAILERS:-100}"
  export BROCTLD_HYGIENE_OUTPUT_KILLS="${BROCTLD_HYGIENE_OUTPUT_KILLS:-10}"
  export BROCTLD_FUZZ_CASES="${BROCTLD_FUZZ_CASES:-20000}"
  export BROCTLD_FUZZ_LIVE_ROUNDS="${BROCTLD_FUZZ_LIVE_ROUNDS:-400}"
fi

out_dir="${CARGO_TARGET_DIR:-target}/reliability"
mkdir -p "$out_dir"
figures="$out_dir/figures.txt"
: > "$figures"

binaries=(fuzz_shm fault_main fault_supervisor fault_guardian fault_hostile fault_records fault_upgrade hygiene_process hygiene_output hygiene_root)
echo "== building the test binaries"
cargo test --no-run $(printf -- '--test %s ' "${binaries[@]}") >/dev/null 2>&1 \
  || cargo test --no-run $(printf -- '--test %s ' "${binaries[@]}") || exit 1

failed=0
summary=()
for b in "${binaries[@]}"; do
  log="$out_dir/$b.log"
  start=$(date +%s)
  # One test at a time: the counts are large and the machine small.
  cargo test -q --test "$b" -- --nocapture --test-threads=1 >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  result=$(grep -E '^test result:' "$log" | tail -1)
  grep -oE 'FIGURE .*' "$log" >> "$figures"
  printf '%-18s %4ss  %s\n' "$b" "$secs" "${result:-no result line (see $log)}"
  summary+=("$b|$secs|$result")
  [ "$rc" = 0 ] || failed=1
done

echo
echo "== figures ($figures)"
cat "$figures"

if [ "$known" = 1 ]; then
  echo
  echo "== known bugs (#[ignore = \"bug: ...\"] tests; each fails until fixed)"
  for b in "${binaries[@]}"; do
    cargo test --test "$b" -- --ignored --test-threads=1 2>&1 \
      | grep -oE '^test [a-z0-9_]+ \.\.\. (ok|FAILED)$' | sed "s/^test /$b: /"
  done
fi

echo
if [ "$failed" = 0 ]; then
  echo "reliability run: all passed"
else
  echo "reliability run: FAILURES (logs in $out_dir)"
fi
exit "$failed"
