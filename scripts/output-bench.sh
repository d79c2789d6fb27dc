#!/bin/sh
# Node output through the Supervisor: one node writing flat out for SECONDS (default 3), with
# its output carried by the Supervisor (rotated at 64 MiB) and, for comparison, straight to its
# file (log_direct = true). Two writers: `broctld-node --lines 0` (numbered lines, about 15
# bytes each, formatted one by one) and `yes` (8 KiB writes of "y\n"). Prints the bytes and
# lines per second that reached the files and the CPU the Supervisor and the node used.
# Run from the repository after `cargo build --release`; needs a few GB free under /tmp.
set -eu
secs=${1:-3}
bin=$(pwd)/target/release
dir=$(mktemp -d /tmp/broctld-output-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for writer in lines yes; do
    case $writer in
        lines) cmd="\"$bin/broctld-node\", \"--lines\", \"0\"" ;;
        yes) cmd="\"/usr/bin/yes\"" ;;
    esac
    for mode in supervisor direct; do
        direct=false
        [ "$mode" = direct ] && direct=true
        cat > "$dir/c.toml" <<TOML
[[node]]
name = "w"
command = [$cmd]
cwd = "$dir/spool"
log_max_bytes = 67108864
log_keep = 1000
log_direct = $direct
TOML
        b="$bin/broctld --runtime-dir $dir/run --instance bench --config $dir/c.toml"
        $b start >/dev/null
        sup=$(head -1 "$dir/run/bench/supervisor.lock" | cut -d' ' -f1)
        node=$($b status --json | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' | head -1)
        s0=$(cpu "$sup"); n0=$(cpu "$node")
        sleep "$secs"
        s1=$(cpu "$sup"); n1=$(cpu "$node")
        kill -STOP "$node"
        bytes=$(cat "$dir"/spool/stdout.log* | wc -c)
        lines=$(cat "$dir"/spool/stdout.log* | wc -l)
        kill -CONT "$node"
        $b shutdown >/dev/null
        awk -v w="$writer" -v m="$mode" -v b="$bytes" -v l="$lines" -v s="$secs" \
            -v sc="$((s1 - s0))" -v nc="$((n1 - n0))" -v t="$ticks" \
            'BEGIN { printf "%-5s %-10s %8.0f MB/s %12.0f lines/s  supervisor CPU %5.1f%%  node CPU %5.1f%%\n",
                     w, m, b / s / 1e6, l / s, 100 * sc / t / s, 100 * nc / t / s }'
        rm -rf "$dir/spool" "$dir/run"
    done
done
