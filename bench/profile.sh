#!/usr/bin/env bash
# Profiles the server while sluice-bench drives one scenario: perf stat (CPU
# time, context switches, fsync and WAL writes) and perf record (cpu-clock
# samples with DWARF call graphs: virtual machines often have no hardware
# counters, and the release build has no frame pointers).
#
#   cargo build --release && bench/profile.sh ingest|status|dispatch [seconds]
#
# Writes $OUT (default /tmp/sluice-profile-<scenario>): bench.txt, stat.txt,
# perf.data, threads.txt (CPU per server thread), report.txt (top symbols,
# self time) and callers.txt (inclusive time). Needs `perf` (Debian:
# linux-perf) and perf_event_paranoid <= 1 or root.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:?usage: bench/profile.sh ingest|status|dispatch [seconds]}"
secs="${2:-5}"
out="${OUT:-/tmp/sluice-profile-$scenario}"
server="${SERVER:-target/release/sluice}"
mkdir -p "$out"

case "$scenario" in
  dispatch) match='--interval 0'; extra=(--dispatch-batches 200000) ;;
  ingest | status) match='--interval 1h'; extra=(--duration "$((secs + 8))s") ;;
  *) echo "profile.sh profiles ingest, status or dispatch" >&2; exit 2 ;;
esac

target/release/sluice-bench --server "$server" --scenario "$scenario" "${extra[@]}" \
  >"$out/bench.txt" 2>&1 &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT

pid=""
for _ in $(seq 600); do
  pid="$(grep -- "$match" "$out/bench.txt" | grep -o 'server pid [0-9]*' | tail -1 | awk '{print $3}' || true)"
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "no server started; see $out/bench.txt" >&2; exit 1; }
# Past the creation of status targets and the warm-up.
sleep 3

# CPU per thread over the window, from /proc (the writer thread has its own name).
python3 - "$pid" "$secs" >"$out/threads.txt" <<'EOF' &
import os, sys, time
pid, secs = sys.argv[1], float(sys.argv[2])
def ticks(t):
    s = open(f"/proc/{pid}/task/{t}/stat").read()
    f = s[s.rfind(")") + 2:].split()
    return int(f[11]) + int(f[12])
tasks = os.listdir(f"/proc/{pid}/task")
names = {t: open(f"/proc/{pid}/task/{t}/comm").read().strip() for t in tasks}
before = {t: ticks(t) for t in tasks}
time.sleep(secs)
hz = os.sysconf("SC_CLK_TCK")
for t in tasks:
    try:
        print(f"{t:>8} {names[t]:<18} {(ticks(t) - before[t]) / hz / secs:.2f} cores")
    except OSError:
        pass
EOF
threads=$!
perf stat -e task-clock,context-switches,syscalls:sys_enter_fsync,syscalls:sys_enter_pwrite64 \
  -p "$pid" -o "$out/stat.txt" -- sleep "$secs" &
stat=$!
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" \
  -- sleep "$secs" 2>/dev/null
wait "$stat" "$threads"
wait "$bench" || true
trap - EXIT

perf report -i "$out/perf.data" --stdio --no-children --sort comm,dso,sym -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -60 >"$out/report.txt" || true
perf report -i "$out/perf.data" --stdio --children --sort sym -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -120 >"$out/callers.txt" || true
echo "== $scenario: $out"
grep -E 'throughput|latency|CPU|batches/s' "$out/bench.txt" || true
echo "-- threads"; cat "$out/threads.txt"
echo "-- perf stat"; grep -vE '^\s*$|^#' "$out/stat.txt"
echo "-- top symbols (self)"; head -25 "$out/report.txt" || true
