#!/usr/bin/env bash
# Builds one flavour of the kernel and prints the path of its ELF on stdout.
#
#   kernel/flavour.sh product|bench|ktest [--release]
#
#   product  no features: bring-up, drivers and the main job without a workload (the kernel
#            `cargo build -p kernel --target x86_64-unknown-none` builds)
#   bench    --features bench: + the DSA workload runner and the IMS benchmark
#   ktest    --features ktest: + the kernel tests and their framework (includes bench)
#
# Cargo writes every flavour to the same target/x86_64-unknown-none/<profile>/kernel, so the
# build and a copy to kernel-<flavour> beside it happen under a lock: concurrent callers of
# different flavours each get their own file. qemu-run.sh, boot/mkiso.sh and the test
# harness (tests/src/lib.rs) build through this script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

FLAVOUR=""
PROFILE=debug
while [ $# -gt 0 ]; do
  case "$1" in
    product|bench|ktest) [ -z "$FLAVOUR" ] || usage; FLAVOUR="$1"; shift ;;
    --release) PROFILE=release; shift ;;
    -h|--help) usage ;;
    *) echo "flavour: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$FLAVOUR" ] || usage

BUILD=(cargo build -p kernel --target x86_64-unknown-none)
[ "$PROFILE" = release ] && BUILD+=(--release)
[ "$FLAVOUR" = product ] || BUILD+=(--features "$FLAVOUR")

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
OUT_DIR="$TARGET_DIR/x86_64-unknown-none/$PROFILE"
mkdir -p "$OUT_DIR"
exec 9>"$TARGET_DIR/x86_64-unknown-none/.flavour.lock"
flock 9
(cd "$ROOT" && "${BUILD[@]}" >&2) || { echo "flavour: kernel build failed: ${BUILD[*]}" >&2; exit 1; }
cp "$OUT_DIR/kernel" "$OUT_DIR/kernel-$FLAVOUR.tmp"
mv -f "$OUT_DIR/kernel-$FLAVOUR.tmp" "$OUT_DIR/kernel-$FLAVOUR"
printf '%s\n' "$OUT_DIR/kernel-$FLAVOUR"
