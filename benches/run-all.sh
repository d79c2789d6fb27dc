#!/usr/bin/env bash
# Runs every broctld benchmark in one go, on this machine, and writes the results into
# docs/benchmarks.md (between its <!-- NAME:begin/end --> markers) and docs/img/*.png.
#
#   sudo benches/run-all.sh           # full run (about 10 minutes on 2 cores), updates the docs
#   sudo benches/run-all.sh --quick   # small N, short criterion runs; results in the target dir only
#
# Needs root for the peers part (apt-get of s6, runit, supervisor, gnuplot, strace when missing,
# and the kernel's proc connector). Honours CARGO_TARGET_DIR; defaults to ./target.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
if [ "${1:-}" = "--quick" ]; then
    quick="--quick"
fi
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-results"
mkdir -p "$out"

echo "== peers: install what is missing"
python3 benches/peers/peers.py --install-only

echo "== build"
cargo build --release --bins

echo "== criterion: cargo bench --bench ipc"
crit_args=()
if [ -n "$quick" ]; then
    crit_args=(-- --warm-up-time 0.3 --measurement-time 1 --sample-size 20)
fi
BROCTLD_BENCH_SUMMARY="$out/criterion.md" cargo bench --bench ipc "${crit_args[@]}" 2>&1 | tee "$out/criterion.log"

echo "== peers: benches/peers/peers.py"
docs=(--docs docs/benchmarks.md)
if [ -n "$quick" ]; then
    docs=()
fi
python3 benches/peers/peers.py $quick --broctld "$target/release/broctld" --out "$out" \
    --criterion "$out/criterion.md" "${docs[@]}" 2>&1 | tee "$out/peers.log"

echo "== done: raw results in $out/"
