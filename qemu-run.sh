#!/usr/bin/env bash
# The one QEMU command line of this project: boots the kernel (PVH, `-kernel`) or its GRUB
# ISO (BIOS or UEFI) on q35 with the VT-d IOMMU in scalable mode, serial on stdout.
#
#   ./qemu-run.sh                      build the kernel if stale, run the main job: boot report,
#                                      one DSA device, the default DSA workload and its summary
#                                      (each run builds the kernel flavour it needs: see --help)
#   ./qemu-run.sh --workload SPEC      run a chosen DSA workload (README: "DSA workloads")
#   ./qemu-run.sh --ktest              run every kernel test   (--ktest=smp,vector: filter)
#   ./qemu-run.sh --ims-bench          the IMS benchmark: shared vector vs. one vector per handle,
#                                      and its chart (build/ims-bench.svg, --chart FILE)
#   ./qemu-run.sh --help               all options
#
# Exit status: 0 the kernel reported success (isa-debug-exit 0x10 → QEMU 33),
#              1 the kernel reported failure (0x11 → 35),
#              2 usage or environment error (QEMU missing/too old, build failed),
#              3 QEMU ended without a verdict (triple fault / reset under -no-reboot, shutdown),
#              4 QEMU itself failed (bad arguments, missing firmware, crash),
#              5 --ims-bench: the run passed but its chart could not be written (reason printed),
#            124 timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="qemu-run"

usage() {
  cat <<'EOF'
usage: ./qemu-run.sh [options] [-- extra QEMU arguments]

Boot source (default: build the kernel flavour the run needs with kernel/flavour.sh and boot
target/x86_64-unknown-none/<profile>/kernel-<flavour>):
  --kernel ELF         boot this kernel ELF through PVH (-kernel)
  --iso ISO            boot a GRUB ISO (boot/mkiso.sh) with SeaBIOS
  --uefi               with --iso: boot through OVMF instead of SeaBIOS
  --release            build/boot the release kernel
  --flavour F          build this kernel flavour instead of the one the run needs
                       [KERNEL_FLAVOUR]: product (no kernel tests, no workload runner, no
                       benchmark), bench (+ DSA workload runner and IMS benchmark) or ktest
                       (+ kernel tests). Default: ktest with ktest/ktest.list in the kernel
                       arguments, else product with workload=none and no ims.bench, else bench

Machine (each also settable through the environment variable in brackets):
  --smp N              CPUs                                   [SMP, default 4]
  --mem SIZE           memory                                 [MEM, default 512M]
  --accel tcg|kvm      accelerator                            [ACCEL, default tcg]
  --cpu MODEL          CPU model                              [CPU, default max]
  --dsa N              N intel-dsa devices behind pcie-root-ports (patched QEMU) [DSA, default 1]
  --dsa-opts PROPS     extra intel-dsa properties for every device, e.g. fault-injection=on
                       or wq-size=64,num-engines=2                       [DSA_OPTS]
  --posted-intr on|off intel-iommu posted interrupts (CAP.PI, x-posted-intr; patched QEMU)
                                                              [POSTED_INTR, default on]
  --icount             -icount shift=0: TSC = guest instruction count; also passes `icount`
                       to the kernel so workload costs are labelled as instructions [ICOUNT=1]
  --gdb[=PORT]         gdb stub on PORT (default 1234), CPU halted at start; no timeout
  --timeout SEC        kill QEMU after SEC seconds, 0 = never [TIMEOUT, default 300]

Kernel command line:
  --append "ARGS"      kernel arguments (PVH boots only)      [KARGS]
  --ktest[=FILTER]     run the kernel tests (adds ktest[=FILTER] to the arguments)
  --sva-suite          the hostile-process suite (README "SVA suite"): ring-3 attackers
                       against a victim, one RESULT line per attack; 4 CPUs, one DSA, ktest
                       flavour (adds sva.suite to the arguments)
  --workload SPEC      DSA workload instead of the default (adds workload=SPEC), e.g.
                       'memmove,crc:size=4k,64k:mode=dwq,swq:batch=1,32:completion=poll,irq:cpus=all'
                       ('none' skips it)
  --iommu on|off       the VT-d IOMMU device (default on; off = a platform without VT-d) [IOMMU]
  --dsa-config FILE    accel-config JSON for the DSA devices, passed through fw_cfg as
                       opt/dsa/accel-config.json (or: --append 'dsa.config=<compact JSON>')
  --ims-bench          the IMS benchmark (README "IMS benchmark"): both designs, same workload,
                       1..2048 handles per CPU; implies --icount, 4 CPUs unless --smp/SMP
                       says otherwise, and no DSA workload unless --workload is given
  --chart FILE|none    with --ims-bench: after a passing run, draw the SVG chart of its
                       RESULT lines (tests/ims-chart) to FILE [default build/ims-bench.svg]

  Extra QEMU arguments: after --, or in QEMU_ARGS (split on spaces).
  QEMU binary: $QEMU if set; else emulator/qemu/build.sh --ensure if present; else the
  system qemu-system-x86_64 (must be >= 10.0).
EOF
}

die() { echo "$PROG: $*" >&2; exit 2; }

SMP_SET="${SMP:+1}"
SMP="${SMP:-4}"
IMS_BENCH=0
SVA_SUITE=0
CHART=""
WORKLOAD_SET=0
MEM="${MEM:-512M}"
ACCEL="${ACCEL:-tcg}"
CPU="${CPU:-max}"
KARGS="${KARGS:-}"
TIMEOUT="${TIMEOUT:-300}"
ICOUNT="${ICOUNT:-0}"
IOMMU="${IOMMU:-on}"
DSA="${DSA:-1}"
DSA_OPTS="${DSA_OPTS:-}"
DSA_CONFIG=""
POSTED_SET="${POSTED_INTR:+1}"
POSTED_INTR="${POSTED_INTR:-on}"
GDB_PORT=""
KERNEL=""
ISO=""
UEFI=0
PROFILE="debug"
FLAVOUR="${KERNEL_FLAVOUR:-}"
EXTRA=()
read -r -a ENV_EXTRA <<< "${QEMU_ARGS:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --kernel) [ $# -ge 2 ] || die "--kernel needs a path"; KERNEL="$2"; shift 2 ;;
    --iso) [ $# -ge 2 ] || die "--iso needs a path"; ISO="$2"; shift 2 ;;
    --uefi) UEFI=1; shift ;;
    --release) PROFILE="release"; shift ;;
    --flavour) [ $# -ge 2 ] || die "--flavour needs product, bench or ktest"; FLAVOUR="$2"; shift 2 ;;
    --smp) [ $# -ge 2 ] || die "--smp needs a number"; SMP="$2"; SMP_SET=1; shift 2 ;;
    --mem) [ $# -ge 2 ] || die "--mem needs a size"; MEM="$2"; shift 2 ;;
    --accel) [ $# -ge 2 ] || die "--accel needs tcg or kvm"; ACCEL="$2"; shift 2 ;;
    --cpu) [ $# -ge 2 ] || die "--cpu needs a model"; CPU="$2"; shift 2 ;;
    --dsa) [ $# -ge 2 ] || die "--dsa needs a count"; DSA="$2"; shift 2 ;;
    --dsa-opts) [ $# -ge 2 ] || die "--dsa-opts needs properties"; DSA_OPTS="$2"; shift 2 ;;
    --iommu) [ $# -ge 2 ] || die "--iommu needs on or off"; IOMMU="$2"; shift 2 ;;
    --dsa-config) [ $# -ge 2 ] || die "--dsa-config needs a file"; DSA_CONFIG="$2"; shift 2 ;;
    --workload) [ $# -ge 2 ] || die "--workload needs a spec"; KARGS="${KARGS:+$KARGS }workload=$2"; WORKLOAD_SET=1; shift 2 ;;
    --ims-bench) IMS_BENCH=1; shift ;;
    --posted-intr) [ $# -ge 2 ] || die "--posted-intr needs on or off"; POSTED_INTR="$2"; POSTED_SET=1; shift 2 ;;
    --chart) [ $# -ge 2 ] || die "--chart needs a file (or none)"; CHART="$2"; shift 2 ;;
    --icount) ICOUNT=1; shift ;;
    --gdb) GDB_PORT=1234; shift ;;
    --gdb=*) GDB_PORT="${1#--gdb=}"; shift ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TIMEOUT="$2"; shift 2 ;;
    --append) [ $# -ge 2 ] || die "--append needs arguments"; KARGS="${KARGS:+$KARGS }$2"; shift 2 ;;
    --ktest) KARGS="${KARGS:+$KARGS }ktest"; shift ;;
    --sva-suite) SVA_SUITE=1; shift ;;
    --ktest=*) KARGS="${KARGS:+$KARGS }ktest=${1#--ktest=}"; shift ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

# --ims-bench: instruction counts (-icount), several CPUs for the per-CPU figures (the
# benchmark keeps the other vCPUs in hlt while one measures), the benchmark instead of the
# default workload.
if [ "$IMS_BENCH" = 1 ]; then
  ICOUNT=1
  [ -n "$SMP_SET" ] || SMP=4
  [ "$WORKLOAD_SET" = 1 ] || KARGS="${KARGS:+$KARGS }workload=none"
  KARGS="${KARGS:+$KARGS }ims.bench"
  [ "$DSA" -ge 1 ] 2>/dev/null || DSA=1
fi
# --sva-suite: the hostile-process suite (README "SVA suite"): 4 CPUs and one DSA unless
# --smp/SMP and --dsa say otherwise; its programs are in the ktest flavour.
if [ "$SVA_SUITE" = 1 ]; then
  [ -n "$SMP_SET" ] || SMP=4
  KARGS="${KARGS:+$KARGS }sva.suite"
  [ "$DSA" -ge 1 ] 2>/dev/null || DSA=1
fi
[[ "$SMP" =~ ^[1-9][0-9]*$ ]] || die "SMP must be a positive number, not '$SMP'"
[[ "$DSA" =~ ^[0-9]+$ ]] || die "DSA must be a number, not '$DSA'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "TIMEOUT must be seconds, not '$TIMEOUT'"
case "$ACCEL" in tcg|kvm) ;; *) die "ACCEL must be tcg or kvm, not '$ACCEL'" ;; esac
case "$FLAVOUR" in ""|product|bench|ktest) ;; *) die "--flavour (KERNEL_FLAVOUR) must be product, bench or ktest, not '$FLAVOUR'" ;; esac
case "$POSTED_INTR" in on|off) ;; *) die "POSTED_INTR must be on or off, not '$POSTED_INTR'" ;; esac
case "$IOMMU" in on|off) ;; *) die "IOMMU must be on or off, not '$IOMMU'" ;; esac
if [ "$ICOUNT" = 1 ] && [ "$ACCEL" != tcg ]; then die "--icount needs ACCEL=tcg"; fi
if [ -n "$ISO" ] && [ -n "$KERNEL" ]; then die "--iso and --kernel are exclusive"; fi
if [ "$UEFI" = 1 ] && [ -z "$ISO" ]; then die "--uefi needs --iso"; fi
if [ -n "$CHART" ] && [ "$IMS_BENCH" != 1 ]; then die "--chart needs --ims-bench"; fi
[[ "$DSA_OPTS" =~ ^[A-Za-z0-9_.,=-]*$ ]] || die "--dsa-opts takes prop=value[,prop=value…], not '$DSA_OPTS'"
if [ -n "$DSA_CONFIG" ]; then
  [ -f "$DSA_CONFIG" ] || die "--dsa-config: '$DSA_CONFIG' not found"
  case "$DSA_CONFIG" in *,*) die "--dsa-config: the path must not contain a comma" ;; esac
fi

# --- QEMU binary ---------------------------------------------------------------------------
install_hint() {
  cat >&2 <<'EOF'
  Install QEMU 10 from Debian bookworm-backports:
    sudo apt-get update && sudo apt-get install -y -t bookworm-backports qemu-system-x86
  (.ci/install-deps.sh adds bookworm-backports to apt and installs everything needed.)
EOF
}

if [ -n "${QEMU:-}" ]; then
  QEMU_BIN="$QEMU"
elif [ -x "$ROOT/emulator/qemu/build.sh" ]; then
  if ! QEMU_BIN="$("$ROOT/emulator/qemu/build.sh" --ensure)"; then
    cat >&2 <<EOF
$PROG: the patched QEMU 10.0.2 (emulator/qemu/build.sh) could not be built; its reason is above.
  Install what it needs (Debian bookworm: build packages, QEMU 10 and a deb-src entry from
  bookworm-backports, the Rust target) and build it, from the repository root:
    sudo .ci/install-deps.sh && emulator/qemu/build.sh --ensure
  Or run another QEMU >= 10.0 (no intel-dsa device: the DSA parts are skipped):
    QEMU=/path/to/qemu-system-x86_64 ./qemu-run.sh
EOF
    exit 2
  fi
  [ -n "$QEMU_BIN" ] || die "emulator/qemu/build.sh --ensure printed no QEMU path"
elif command -v qemu-system-x86_64 >/dev/null 2>&1; then
  QEMU_BIN="$(command -v qemu-system-x86_64)"
else
  echo "$PROG: qemu-system-x86_64 not found." >&2
  install_hint
  exit 2
fi
if ! [ -x "$QEMU_BIN" ] && ! command -v "$QEMU_BIN" >/dev/null 2>&1; then
  echo "$PROG: QEMU binary '$QEMU_BIN' not found or not executable." >&2
  install_hint
  exit 2
fi
QEMU_VERSION="$("$QEMU_BIN" --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1.\2/p')"
if [ -z "$QEMU_VERSION" ] || [ "${QEMU_VERSION%%.*}" -lt 10 ]; then
  echo "$PROG: $QEMU_BIN is QEMU ${QEMU_VERSION:-of unknown version}; version 10.0 or newer is required" >&2
  echo "  (older QEMU lacks TCG x2APIC and the VT-d scalable-mode options this project uses)." >&2
  install_hint
  exit 2
fi

# --- Kernel / ISO --------------------------------------------------------------------------
# The flavour this run needs (kernel/src/flavour.rs): the kernel tests need `ktest`; the
# workload (the main job's default) and the IMS benchmark need `bench`; a main job with
# workload=none needs neither (the product kernel).
needed_flavour() {
  local t wl="" tests=0 bench=0
  set -f
  for t in $KARGS; do
    case "$t" in
      ktest|ktest=*|ktest.list|ktest.list=*|sva.suite) tests=1 ;;
      ims.bench|ims.bench=*|ims.bench.*) bench=1 ;;
      workload) wl="" ;;
      workload=*) wl="${t#workload=}" ;;
    esac
  done
  set +f
  if [ "$tests" = 1 ]; then echo ktest
  elif [ "$bench" = 1 ]; then echo bench
  elif [ "$wl" = none ] || [ "$wl" = off ]; then echo product
  else echo bench
  fi
}
if [ -z "$KERNEL" ] && [ -z "$ISO" ]; then
  [ -n "$FLAVOUR" ] || FLAVOUR="$(needed_flavour)"
  BUILD=("$ROOT/kernel/flavour.sh" "$FLAVOUR")
  [ "$PROFILE" = release ] && BUILD+=(--release)
  KERNEL="$("${BUILD[@]}")" || die "kernel build failed"
  echo "$PROG: kernel flavour $FLAVOUR" >&2
elif [ -n "$FLAVOUR" ]; then
  die "--flavour builds a kernel; it does not go with --kernel or --iso"
fi
if [ -n "$KERNEL" ] && [ ! -f "$KERNEL" ]; then die "kernel '$KERNEL' not found"; fi
if [ -n "$ISO" ] && [ ! -f "$ISO" ]; then die "ISO '$ISO' not found"; fi

# --- Machine -------------------------------------------------------------------------------
ARGS=(
  -machine "q35,accel=$ACCEL,kernel-irqchip=split"
  -cpu "$CPU"
  -smp "$SMP"
  -m "$MEM"
  -nodefaults
  -display none
  -serial mon:stdio
  -no-reboot
)
if [ "$ICOUNT" = 1 ]; then
  ARGS+=(-icount shift=0)
  # QEMU aborts on x2APIC timer-count reads under -icount; the kernel then calibrates
  # the LAPIC timer with interrupts instead.
  KARGS="${KARGS:+$KARGS }lapic.calibrate=irq icount"
fi

# === Device arguments: add devices here ====================================================
# The IOMMU comes first so that it covers every PCI device added after it. Posted interrupts
# (CAP.PI) exist only in the patched QEMU (emulator/qemu): without them the default quietly
# stays off, an explicit --posted-intr on fails. (grep reads to the end, not -q: with
# pipefail, QEMU killed by SIGPIPE after an early match would read as "absent".)
DEVICE_ARGS=()
if [ "$IOMMU" = on ]; then
  IOMMU_DEV="intel-iommu,intremap=on,x-scalable-mode=on,x-flts=on,x-pasid-mode=on,aw-bits=48"
  if [ "$POSTED_INTR" = on ]; then
    if "$QEMU_BIN" -device intel-iommu,help 2>/dev/null | grep 'x-posted-intr=' >/dev/null; then
      IOMMU_DEV="$IOMMU_DEV,x-posted-intr=on"
    elif [ -n "$POSTED_SET" ]; then
      die "--posted-intr on: $QEMU_BIN's intel-iommu has no x-posted-intr (use emulator/qemu/build.sh)"
    else
      echo "$PROG: note: $QEMU_BIN's intel-iommu has no posted interrupts (x-posted-intr)" >&2
    fi
  fi
  DEVICE_ARGS+=(-device "$IOMMU_DEV")
fi
DEVICE_ARGS+=(-device isa-debug-exit,iobase=0xf4,iosize=0x04)
# DSA=<count>: intel-dsa instances, each behind its own pcie-root-port (so they get PCIe
# extended config space). Only the patched QEMU (emulator/qemu) has the device.
if [ "$DSA" -gt 0 ]; then
  if "$QEMU_BIN" -device help 2>/dev/null | grep '"intel-dsa"' >/dev/null; then
    for ((i = 0; i < DSA; i++)); do
      DEVICE_ARGS+=(-device "pcie-root-port,id=dsa_rp$i,chassis=$((10 + i)),slot=$((10 + i))"
                    -device "intel-dsa,bus=dsa_rp$i${DSA_OPTS:+,$DSA_OPTS}")
    done
  else
    echo "$PROG: DSA=$DSA ignored: $QEMU_BIN has no intel-dsa device" >&2
  fi
fi
# --dsa-config FILE: the kernel reads it from fw_cfg (kernel/src/dsa/config.rs).
if [ -n "$DSA_CONFIG" ]; then
  DEVICE_ARGS+=(-fw_cfg "name=opt/dsa/accel-config.json,file=$DSA_CONFIG")
fi
# ===========================================================================================
ARGS+=("${DEVICE_ARGS[@]}")

VARS=""
cleanup() { [ -n "$VARS" ] && rm -f "$VARS"; return 0; }
trap cleanup EXIT

if [ -n "$ISO" ]; then
  [ -z "$KARGS" ] || echo "$PROG: note: kernel arguments are baked into the ISO; '$KARGS' ignored" >&2
  if [ "$UEFI" = 1 ]; then
    OVMF_CODE="${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}"
    OVMF_VARS="${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}"
    [ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ] ||
      die "OVMF not found ($OVMF_CODE); install it: sudo apt-get install -y ovmf"
    VARS="$(mktemp "${TMPDIR:-/tmp}/ovmf-vars.XXXXXX")"
    cp "$OVMF_VARS" "$VARS"
    ARGS+=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$VARS")
  fi
  ARGS+=(-cdrom "$ISO" -boot d)
else
  ARGS+=(-kernel "$KERNEL")
  [ -z "$KARGS" ] || ARGS+=(-append "$KARGS")
fi

if [ -n "$GDB_PORT" ]; then
  ARGS+=(-gdb "tcp::$GDB_PORT" -S)
  TIMEOUT=0
  echo "$PROG: gdb stub on port $GDB_PORT, CPUs halted: gdb -ex 'target remote :$GDB_PORT' ${KERNEL:-<kernel ELF>}" >&2
fi
ARGS+=("${ENV_EXTRA[@]}" "${EXTRA[@]}")

echo "$PROG: $QEMU_BIN ${ARGS[*]}" >&2

# --- IMS benchmark chart (1/2): keep a copy of the serial output for the chart -------------
# stdout (QEMU's serial console) goes on to the terminal unchanged, through tee.
CHART_LOG=""
if [ "$IMS_BENCH" = 1 ] && [ "$CHART" != none ]; then
  CHART="${CHART:-$ROOT/build/ims-bench.svg}"
  case "$CHART" in /*) ;; *) CHART="$PWD/$CHART" ;; esac
  CHART_LOG="$(mktemp "${TMPDIR:-/tmp}/ims-bench-serial.XXXXXX")"
  exec 3>&1 > >(tee "$CHART_LOG")
  CHART_TEE=$!
fi

set +e
if [ "$TIMEOUT" -gt 0 ]; then
  timeout --foreground -k 5 "$TIMEOUT" "$QEMU_BIN" "${ARGS[@]}"
else
  "$QEMU_BIN" "${ARGS[@]}"
fi
status=$?
set -e

# --- IMS benchmark chart (2/2): after a passing run, the chart of its RESULT lines ----------
if [ -n "$CHART_LOG" ]; then
  exec 1>&3 3>&-
  wait "$CHART_TEE" 2>/dev/null || true
  chart_ok=1
  if [ "$status" = 33 ]; then
    mkdir -p "$(dirname "$CHART")" &&
      (cd "$ROOT" && cargo run -q -p ims-chart -- -o "$CHART" "$CHART_LOG") || chart_ok=0
  fi
  rm -f "$CHART_LOG"
  if [ "$chart_ok" = 0 ]; then
    echo "$PROG: the benchmark passed but its chart could not be written to $CHART (reason above)" >&2
    exit 5
  fi
fi

case $status in
  33) exit 0 ;;
  35) echo "$PROG: the kernel reported FAILURE" >&2; exit 1 ;;
  124|137) echo "$PROG: TIMEOUT: QEMU killed after ${TIMEOUT}s" >&2; exit 124 ;;
  0) echo "$PROG: QEMU ended without a verdict from the kernel (triple fault or reset under -no-reboot, or shutdown)" >&2; exit 3 ;;
  *) echo "$PROG: QEMU failed with status $status" >&2; exit 4 ;;
esac
