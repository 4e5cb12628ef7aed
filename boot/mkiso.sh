#!/usr/bin/env bash
# Builds a GRUB 2 (Multiboot2) ISO of the kernel ELF, bootable with BIOS and UEFI.
# The ISO carries the same ELF that qemu-run.sh boots through PVH.
#
#   boot/mkiso.sh                          build the debug kernel, write target/iso/kernel.iso
#   boot/mkiso.sh -o rig.iso --append "console=ttyS1" --default ktest --timeout 5
#
# Menu entries: "main job" and "kernel tests" (the latter adds `ktest` to the arguments).
# Without a KERNEL_ELF it builds the ktest flavour (kernel/flavour.sh: kernel tests, workload
# runner and benchmark), which serves both entries; `--flavour product` or `bench` builds that
# flavour instead and leaves the kernel-tests entry out.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'USAGE'
usage: boot/mkiso.sh [-o OUT.iso] [--append "ARGS"] [--default main|ktest]
                        [--timeout SEC] [--serial-unit N] [--release]
                        [--flavour product|bench|ktest] [KERNEL_ELF]
  -o OUT.iso        output (default target/iso/kernel.iso)
  --append ARGS     kernel arguments for both entries (e.g. "console=ttyS1 loglevel=debug")
  --default ENTRY   entry booted when the menu times out: main (default) or ktest
  --timeout SEC     GRUB menu timeout (default 3; 0 boots at once)
  --serial-unit N   also show the GRUB menu on COM(N+1) (default 0 = COM1; "none" disables)
  --release         build the release kernel when no ELF is given
  --flavour F       kernel flavour to build when no ELF is given (default ktest; product and
                    bench have no kernel-tests entry)
USAGE
}

OUT="$ROOT/target/iso/kernel.iso"
KARGS=""
DEFAULT=main
TIMEOUT=3
SERIAL_UNIT=0
PROFILE=debug
FLAVOUR=""
ELF=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -o) OUT="$2"; shift 2 ;;
    --append) KARGS="$2"; shift 2 ;;
    --default) DEFAULT="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --serial-unit) SERIAL_UNIT="$2"; shift 2 ;;
    --release) PROFILE=release; shift ;;
    --flavour) FLAVOUR="$2"; shift 2 ;;
    -*) echo "mkiso: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) ELF="$1"; shift ;;
  esac
done
case "$DEFAULT" in main) DEFAULT_IDX=0 ;; ktest) DEFAULT_IDX=1 ;; *) echo "mkiso: --default must be main or ktest" >&2; exit 2 ;; esac
case "$FLAVOUR" in
  "") ;;
  product|bench|ktest) [ -z "$ELF" ] || { echo "mkiso: --flavour builds a kernel; it does not go with KERNEL_ELF" >&2; exit 2; } ;;
  *) echo "mkiso: --flavour must be product, bench or ktest" >&2; exit 2 ;;
esac
# The kernel-tests entry needs a kernel with the tests (an ELF given here is assumed to have them).
TESTS_ENTRY=1
case "$FLAVOUR" in product|bench) TESTS_ENTRY=0 ;; esac
if [ "$TESTS_ENTRY" = 0 ] && [ "$DEFAULT" = ktest ]; then
  echo "mkiso: --default ktest needs the ktest flavour" >&2; exit 2
fi
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "mkiso: --timeout must be seconds" >&2; exit 2; }

for tool in grub-mkrescue xorriso mformat; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "mkiso: $tool not found; install: sudo apt-get install -y grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools" >&2
    exit 2
  }
done

if [ -z "$ELF" ]; then
  BUILD=("$ROOT/kernel/flavour.sh" "${FLAVOUR:-ktest}")
  [ "$PROFILE" = release ] && BUILD+=(--release)
  ELF="$("${BUILD[@]}")"
fi
[ -f "$ELF" ] || { echo "mkiso: kernel ELF '$ELF' not found" >&2; exit 2; }

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/mkiso.XXXXXX")"
LOG="$(mktemp "${TMPDIR:-/tmp}/mkiso-log.XXXXXX")"
trap 'rm -rf "$STAGE" "$LOG"' EXIT
mkdir -p "$STAGE/boot/grub"
cp "$ELF" "$STAGE/boot/kernel.elf"
{
  echo "set timeout=$TIMEOUT"
  echo "set default=$DEFAULT_IDX"
  if [ "$SERIAL_UNIT" != none ]; then
    echo "serial --unit=$SERIAL_UNIT --speed=115200"
    echo "terminal_input console serial"
    echo "terminal_output console serial"
  fi
  echo "menuentry \"dsa unikernel: main job\" {"
  echo "  multiboot2 /boot/kernel.elf $KARGS"
  echo "  boot"
  echo "}"
  if [ "$TESTS_ENTRY" = 1 ]; then
    echo "menuentry \"dsa unikernel: kernel tests\" {"
    echo "  multiboot2 /boot/kernel.elf ktest $KARGS"
    echo "  boot"
    echo "}"
  fi
} > "$STAGE/boot/grub/grub.cfg"

mkdir -p "$(dirname "$OUT")"
if ! grub-mkrescue -o "$OUT.tmp" "$STAGE" >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "mkiso: grub-mkrescue failed" >&2
  exit 1
fi
mv "$OUT.tmp" "$OUT"
echo "$OUT"
