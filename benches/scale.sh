#!/usr/bin/env bash
# How start and shutdown grow with the node count (issue 16, defect 19; issue 17's table).
#
#   benches/scale.sh [N...]          default: 500 1000 2000
#   RUNS=3 benches/scale.sh 1000     median of RUNS runs per N (default 3)
#   RT=/dev/shm benches/scale.sh     runtime dir and logs on tmpfs (default: under /tmp)
#
# Each run: N `sleep` nodes with the default settings (a cgroup per node when the host allows
# it, output through the Supervisor), `autostart = false`. `start n1` brings the Supervisor
# up; then it measures `broctld start` (the other N-1 nodes, until all run) and
# `broctld shutdown`, each as wall time and as the Supervisor's CPU time in it (utime+stime
# from /proc for the start; `perf stat -e task-clock` on its pid for the shutdown, blank
# without perf). Prints one row per N with the medians and the growth from the row before.
# Uses target/release/broctld (built if missing; B= names another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/broctld}
[ -x "$B" ] || cargo build --release --bin broctld
runs=${RUNS:-3}
base=${RT:-/tmp}
ns=("$@")
[ ${#ns[@]} -gt 0 ] || ns=(500 1000 2000)
tick=$(getconf CLK_TCK)

cpu_ms() { # utime+stime of pid $1 in ms
  local f
  read -r -a f < <(sed 's/.*) //' "/proc/$1/stat")
  echo $(( (f[11] + f[12]) * 1000 / tick ))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "")}'; }

one() { # N -> "start_ms start_cpu_ms stop_ms stop_cpu_ms"
  local n=$1 d args sup c0 c1 t0 t1 t2 stop_cpu
  d=$(mktemp -d "$base/broctld-scale-XXXX")
  for i in $(seq 1 "$n"); do
    printf '[[node]]\nname = "n%d"\nautostart = false\ncommand = ["sleep", "100000"]\n' "$i"
  done >"$d/b.toml"
  args=(--runtime-dir "$d/run" --instance "scale$n" --config "$d/b.toml")
  "$B" "${args[@]}" start n1 >/dev/null
  sup=$(awk 'NR==1{print $1}' "$d/run/scale$n/supervisor.lock")
  c0=$(cpu_ms "$sup")
  t0=$(date +%s%N)
  "$B" "${args[@]}" start >/dev/null 2>&1
  t1=$(date +%s%N)
  c1=$(cpu_ms "$sup")
  stop_cpu=
  if command -v perf >/dev/null 2>&1; then
    perf stat -x, -e task-clock -p "$sup" -o "$d/perf" 2>/dev/null &
    local pp=$!
    sleep 0.2
  fi
  t1=$(date +%s%N)
  "$B" "${args[@]}" shutdown >/dev/null
  t2=$(date +%s%N)
  if [ -n "${pp:-}" ]; then
    wait "$pp" || true
    stop_cpu=$(awk -F, '/task-clock/{printf "%d", $1}' "$d/perf")
  fi
  rm -rf "$d"
  echo "$(( (t1 - t0) / 1000000 )) $((c1 - c0)) $(( (t2 - t1) / 1000000 )) ${stop_cpu:--}"
}

printf '| nodes | start ms | x | Supervisor CPU ms | x | shutdown ms | x | Supervisor CPU ms | x |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
prev=()
for n in "${ns[@]}"; do
  rows=()
  for _ in $(seq 1 "$runs"); do rows+=("$(one "$n")"); done
  cur=()
  for k in 1 2 3 4; do
    cur+=("$(printf '%s\n' "${rows[@]}" | awk -v k=$k '{print $k}' | median)")
  done
  line="| $n"
  for k in 0 1 2 3; do
    x=
    if [ ${#prev[@]} -gt 0 ] && [ "${prev[$k]}" != "-" ] && [ "${prev[$k]:-0}" -gt 0 ] 2>/dev/null; then
      x=$(awk -v a="${cur[$k]}" -v b="${prev[$k]}" 'BEGIN{printf "%.2f", a/b}')
    fi
    line+=" | ${cur[$k]} | ${x}"
  done
  echo "$line |"
  prev=("${cur[@]}")
done
