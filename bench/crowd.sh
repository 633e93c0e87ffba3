#!/usr/bin/env bash
# A refused start beside a crowd: idle processes with many descriptors each,
# as on a busy server. For each crowd (PROCESSES x DESCRIPTORS), a holder
# takes the lock (its PID in the file, as a pidlock holder writes it), then
# each given build of the attribute's hello-world is started RUNS times
# against it and refused; prints the median wall time of one refused start.
#
#   cargo build --release -p pidlock-bench --bin hello-pidlock
#   bash bench/crowd.sh target/release/hello-pidlock [OTHER_BUILD ...]
#
# Two builds are timed in turn within each crowd, so their numbers compare.
set -euo pipefail

RUNS=${RUNS:-15}
CROWDS=${CROWDS:-"0x0 1000x43 4000x43 1000x203"}
(($#)) || { echo "usage: $0 HELLO_PIDLOCK_BUILD..." >&2; exit 2; }

dir=$(mktemp -d)
crowd_pids=()
cleanup() {
  ((${#crowd_pids[@]})) && kill "${crowd_pids[@]}" 2>/dev/null || true
  [[ -n ${holder:-} ]] && kill "$holder" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

pid_file=$dir/hello.pid
# The holder: locks the file, writes its PID, then becomes `sleep` (same PID).
bash -c 'exec 9<>"$0"; flock 9; echo $$ > "$0"; exec sleep 100000' "$pid_file" &
holder=$!
until [[ -s $pid_file ]]; do sleep 0.01; done

# One refused start, in microseconds.
once() {
  local start=$EPOCHREALTIME
  HELLO_PID_FILE=$pid_file "$1" >/dev/null 2>&1 && { echo "$1 was not refused" >&2; exit 1; }
  local end=$EPOCHREALTIME
  echo $(( (${end/./} - ${start/./}) ))
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

for crowd in $CROWDS; do
  processes=${crowd%x*}
  descriptors=${crowd#*x}
  for ((i = 0; i < processes; i++)); do
    bash -c 'for ((fd = 3; fd < $0 + 3; fd++)); do eval "exec $fd</dev/null"; done; exec sleep 100000' "$descriptors" &
    crowd_pids+=($!)
  done
  # Every member has opened its descriptors once it runs `sleep`.
  for pid in "${crowd_pids[@]}"; do
    until [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */sleep ]]; do sleep 0.01; done
  done
  for build in "$@"; do
    for ((run = 0; run < RUNS; run++)); do once "$build"; done > "$dir/times"
    printf '%-12s %-40s %8s us\n' "$crowd" "$build" "$(median < "$dir/times")"
  done
  if ((${#crowd_pids[@]})); then
    kill "${crowd_pids[@]}" 2>/dev/null || true
    wait "${crowd_pids[@]}" 2>/dev/null || true
  fi
  crowd_pids=()
done
