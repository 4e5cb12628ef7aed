#!/usr/bin/env bash
# Soak test: the whole suite and every by-hand command of README.md, run again and again
# while a CPU hog (busy loops) competes for the cores. A test that asserts a property holds
# however slow the host is; one that secretly measures the host fails here.
#
#   tests/soak.sh [options] [N]
#
#   N              `cargo test` runs in a row (default 20), stopping at the first failure
#   -r, --repeat R runs of each by-hand command (default 10), each stopping at its first failure
#   --hog K        busy loops running throughout (default 2; 0 = none)
#   --logs DIR     where the logs go (default target/soak/<date-time>); the logs of failed
#                  runs are kept, those of passed runs deleted unless --keep-logs
#   --keep-logs    keep every log
#   --only cargo|by-hand   run one of the two phases
#
# The by-hand commands (README "Tests" and "IMS benchmark"):
#   ./qemu-run.sh --smp 2 --dsa 1 --ktest=pci,iommu -- -device edu
#   ./qemu-run.sh --smp 2 --dsa-opts fault-injection=on --ktest=dsa,instructions
#   ./qemu-run.sh --dsa-opts fault-injection=on --ktest=ims::
#   ./qemu-run.sh --ims-bench
#
# QEMU: $QEMU if set, as for qemu-run.sh and the tests. Prints a summary (runs, passes, first
# failure and its log per phase). Exit status: 0 every run passed, 1 a run failed, 2 usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="soak"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "$PROG: $*" >&2; exit 2; }

N=20
REPEAT=10
HOG=2
LOGS=""
KEEP=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -r|--repeat) [ $# -ge 2 ] || die "$1 needs a value"; REPEAT="$2"; shift 2 ;;
    --repeat=*) REPEAT="${1#*=}"; shift ;;
    --hog) [ $# -ge 2 ] || die "$1 needs a value"; HOG="$2"; shift 2 ;;
    --hog=*) HOG="${1#*=}"; shift ;;
    --logs) [ $# -ge 2 ] || die "$1 needs a value"; LOGS="$2"; shift 2 ;;
    --logs=*) LOGS="${1#*=}"; shift ;;
    --keep-logs) KEEP=1; shift ;;
    --only) [ $# -ge 2 ] || die "$1 needs a value"; ONLY="$2"; shift 2 ;;
    --only=*) ONLY="${1#*=}"; shift ;;
    -*) die "unknown option $1 (--help lists them)" ;;
    *) N="$1"; shift ;;
  esac
done
for v in N REPEAT HOG; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number, not '${!v}'"
done
case "$ONLY" in ""|cargo|by-hand) ;; *) die "--only takes cargo or by-hand, not '$ONLY'" ;; esac
[ -n "$LOGS" ] || LOGS="$ROOT/target/soak/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$LOGS" || die "cannot create $LOGS"

BY_HAND=(
  "./qemu-run.sh --smp 2 --dsa 1 --ktest=pci,iommu -- -device edu"
  "./qemu-run.sh --smp 2 --dsa-opts fault-injection=on --ktest=dsa,instructions"
  "./qemu-run.sh --dsa-opts fault-injection=on --ktest=ims::"
  "./qemu-run.sh --ims-bench"
)

# The hog: K busy loops, ended (by PID) however this script ends.
HOG_PIDS=()
stop_hog() {
  for p in "${HOG_PIDS[@]}"; do
    kill "$p" 2>/dev/null
  done
  for p in "${HOG_PIDS[@]}"; do
    wait "$p" 2>/dev/null
  done
  HOG_PIDS=()
}
trap stop_hog EXIT
trap 'stop_hog; exit 130' INT
trap 'stop_hog; exit 143' TERM
for ((i = 0; i < HOG; i++)); do
  ( while :; do :; done ) &
  HOG_PIDS+=("$!")
done

SUMMARY=()
FAILED=0

# run_phase NAME COUNT CMD: runs CMD (in $ROOT) up to COUNT times, stops at the first failure.
run_phase() {
  local name="$1" count="$2" cmd="$3"
  local slug passes=0 runs=0 first="" t0 secs log
  slug="$(echo "$name" | tr -c 'A-Za-z0-9' '-' | tr -s '-' | sed 's/^-//; s/-$//' | cut -c1-60)"
  for ((k = 1; k <= count; k++)); do
    log="$LOGS/$slug-$k.log"
    t0=$(date +%s)
    (cd "$ROOT" && echo "\$ $cmd" && eval "$cmd") >"$log" 2>&1 </dev/null
    local rc=$?
    secs=$(( $(date +%s) - t0 ))
    runs=$k
    if [ $rc -eq 0 ]; then
      passes=$((passes + 1))
      echo "[$PROG] $name: run $k/$count passed (${secs} s)"
      [ $KEEP -eq 1 ] || rm -f "$log"
    else
      first="run $k (exit $rc, ${secs} s), log $log"
      echo "[$PROG] $name: run $k/$count FAILED (exit $rc, ${secs} s), log kept: $log"
      FAILED=1
      break
    fi
  done
  SUMMARY+=("$(printf '%-80s %3d run(s), %3d passed, first failure: %s' "$name" "$runs" "$passes" "${first:-none}")")
}

echo "[$PROG] $HOG busy loop(s) running; logs in $LOGS"
echo "[$PROG] QEMU=${QEMU:-<qemu-run.sh default>}; $(nproc) CPU(s); load: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$ONLY" != by-hand ] && [ "$N" -gt 0 ]; then
  run_phase "cargo test" "$N" "cargo test"
fi
if [ "$ONLY" != cargo ] && [ "$REPEAT" -gt 0 ]; then
  for c in "${BY_HAND[@]}"; do
    run_phase "$c" "$REPEAT" "$c"
  done
fi
stop_hog

echo
echo "[$PROG] summary ($HOG busy loop(s), load at the end: $(cut -d' ' -f1-3 /proc/loadavg)):"
for l in "${SUMMARY[@]}"; do
  echo "  $l"
done
if [ $FAILED -eq 0 ]; then
  echo "[$PROG] PASS: every run passed"
else
  echo "[$PROG] FAIL: see the first failure's log above"
fi
exit $FAILED
