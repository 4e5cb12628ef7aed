#!/usr/bin/env bash
# Builds the project's patched QEMU 10.0.2 (TCG MOVDIR64B/ENQCMD/ENQCMDS + -device intel-dsa)
# from Debian's source package and caches it under <checkout>/build/qemu.
#
#   emulator/qemu/build.sh [--ensure]  build if needed; print the binary's absolute path on stdout
#   emulator/qemu/build.sh --force     rebuild (incrementally) even if a cached binary exists
#   emulator/qemu/build.sh --clean     remove build/qemu except the verified source tarball
#
# Progress goes to stderr. The binary is keyed by a hash of our sources (emulator/qemu, the
# sources of emulator/dsa-model (with its fault-inject crate) and drivers/dsa-spec, Cargo.toml,
# Cargo.lock): an unchanged
# tree costs one hash and no build. A change to our C/Rust sources rebuilds incrementally in
# the kept build directory; a change to the patches or to the configure options re-unpacks
# and reconfigures. Concurrent callers serialise on a lock file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/build/qemu"

QEMU_VERSION=10.0.2
DEB_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'
TARBALL="qemu_${QEMU_VERSION}+ds.orig.tar.xz"
TARBALL_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
MESON_VERSION=1.5.2
# Firmware comes from Debian's packages (qemu-system-data, seabios, ipxe-qemu), so the
# binary needs no -L at run time.
FIRMWARE_PATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
CONFIGURE_ARGS=(
  --target-list=x86_64-softmmu --disable-docs --disable-user --disable-gtk --disable-sdl
  --disable-vnc --disable-spice --disable-opengl --disable-werror --disable-rust
  --disable-slirp --disable-download --disable-install-blobs
  --firmwarepath="$FIRMWARE_PATH"
)

log() { printf '[qemu-build] %s\n' "$*" >&2; }
die() { printf '[qemu-build] error: %s\n' "$*" >&2; exit 1; }

usage() { # exit status
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

mode=ensure
case "${1:-}" in
  ""|--ensure) mode=ensure ;;
  --force) mode=force ;;
  --clean) mode=clean ;;
  -h|--help) usage 0 ;;
  *) log "unknown argument: $1"; usage ;;
esac
[ $# -le 1 ] || usage

# ---- source hash (fast path) -------------------------------------------------------------
source_key() {
  # Path and content of every file we own that ends up in the binary, in a stable order.
  (
    cd "$ROOT"
    # (the crates' tests, examples and benches do not reach the staticlib)
    { find emulator/qemu \
        emulator/dsa-model/Cargo.toml emulator/dsa-model/src emulator/dsa-model/include \
        emulator/dsa-model/fault-inject/Cargo.toml emulator/dsa-model/fault-inject/src \
        drivers/dsa-spec/Cargo.toml drivers/dsa-spec/src \
        -type f -not -name '*.swp' -not -name '*~' -print0 2>/dev/null || true; } |
      LC_ALL=C sort -z | xargs -0 -r sha256sum
    sha256sum Cargo.toml Cargo.lock
  ) | sha256sum | cut -c1-20
}

if [ "$mode" = clean ]; then
  mkdir -p "$OUT"
  exec 9>"$OUT/lock"
  flock 9
  log "removing $OUT (keeping the downloaded tarball)"
  find "$OUT" -mindepth 1 -maxdepth 1 ! -name dl ! -name lock -exec rm -rf {} +
  exit 0
fi

KEY=$(source_key)
BIN="$OUT/bin/$KEY/qemu-system-x86_64"
if [ "$mode" = ensure ] && [ -x "$BIN" ]; then
  printf '%s\n' "$BIN"
  exit 0
fi

# ---- slow path: one builder at a time ---------------------------------------------------
mkdir -p "$OUT"
exec 9>"$OUT/lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi
if [ "$mode" = ensure ] && [ -x "$BIN" ]; then
  printf '%s\n' "$BIN"
  exit 0
fi
T0=$(date +%s)

DL="$OUT/dl"
tarball_ok() { [ -f "$DL/$TARBALL" ] && echo "$TARBALL_SHA256  $DL/$TARBALL" | sha256sum -c --status; }

# ---- prerequisites ----------------------------------------------------------------------
missing_prereqs() {
  local m=()
  for c in apt-get tar xz patch sha256sum flock ninja cc pkg-config flex bison cargo; do
    command -v "$c" >/dev/null 2>&1 || m+=("command:$c")
  done
  /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || m+=("python3-venv")
  for p in glib-2.0 pixman-1; do
    pkg-config --exists "$p" 2>/dev/null || m+=("pkg-config:$p")
  done
  [ -f /usr/include/libfdt.h ] || m+=("libfdt-dev")
  [ -f /usr/share/seabios/bios-256k.bin ] || m+=("firmware:/usr/share/seabios/bios-256k.bin")
  [ -f /usr/share/qemu/pvh.bin ] || m+=("firmware:/usr/share/qemu/pvh.bin")
  # The source comes through apt unless the verified tarball is already here. (No `grep -q`
  # after a pipe anywhere in our scripts: it exits at the first match, the writer then dies
  # of SIGPIPE and `pipefail` turns a found line into a failure, at random.)
  if ! tarball_ok && ! apt-cache showsrc qemu 2>/dev/null | grep -xF "Version: $DEB_VERSION" >/dev/null; then
    m+=("apt:deb-src-bookworm-backports(qemu=$DEB_VERSION)")
  fi
  printf '%s\n' "${m[@]}"
}
missing=$(missing_prereqs)
if [ -n "$missing" ]; then
  log "missing: $(echo $missing)"
  if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
    log "running .ci/install-deps.sh"
    "$ROOT/.ci/install-deps.sh" >&2
    missing=$(missing_prereqs)
  fi
  if [ -n "$missing" ]; then
    die "still missing: $(echo $missing)
  Debian packages: ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev flex bison
  python3-venv pkg-config xz-utils, qemu-system-x86 (bookworm-backports, for the firmware);
  a Rust toolchain (cargo); and a 'deb-src' entry for bookworm-backports.
  From the repository root, as a user with sudo: sudo .ci/install-deps.sh"
  fi
fi

# ---- source tarball ---------------------------------------------------------------------
mkdir -p "$DL"
if ! tarball_ok; then
  log "fetching qemu=$DEB_VERSION source through apt"
  tmp=$(mktemp -d "$DL/apt.XXXXXX")
  # apt exits non-zero because the .dsc/.debian.tar.xz of this backport are gone from the
  # archive; the upstream tarball is what we need, and its hash is what we trust.
  (cd "$tmp" && apt-get source --download-only "qemu=$DEB_VERSION") > "$OUT/apt-source.log" 2>&1 || true
  if [ -f "$tmp/$TARBALL" ]; then
    mv -f "$tmp/$TARBALL" "$DL/$TARBALL"
  fi
  rm -rf "$tmp"
  if [ ! -f "$DL/$TARBALL" ]; then
    cat "$OUT/apt-source.log" >&2
    die "apt-get source did not produce $TARBALL (is deb-src for bookworm-backports configured and 'apt-get update' run?)"
  fi
  if ! tarball_ok; then
    rm -f "$DL/$TARBALL"
    die "$TARBALL does not have sha256 $TARBALL_SHA256; refusing to build from it"
  fi
fi

# ---- python venv with meson -------------------------------------------------------------
VENV="$OUT/venv"
if [ "$("$VENV/bin/meson" --version 2>/dev/null || true)" != "$MESON_VERSION" ]; then
  log "creating python venv with meson $MESON_VERSION"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "meson==$MESON_VERSION" pycotap >&2
fi

# ---- patched tree -----------------------------------------------------------------------
SRC="$OUT/src/qemu-$QEMU_VERSION"
OBJ="$OUT/obj"
TREE_KEY=$(
  {
    # what the unpacked, configured tree depends on besides the patches
    echo "$TARBALL_SHA256 $MESON_VERSION ${CONFIGURE_ARGS[*]}"
    find "$HERE/patches" -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -c1-20
)
if [ "$(cat "$OUT/src/.tree-key" 2>/dev/null || true)" != "$TREE_KEY" ]; then
  log "unpacking $TARBALL and applying patches"
  rm -rf "$OUT/src" "$OBJ"
  mkdir -p "$OUT/src"
  tar --no-same-owner -C "$OUT/src" -xf "$DL/$TARBALL"
  for p in "$HERE"/patches/*.patch; do
    log "  patch $(basename "$p")"
    patch -d "$SRC" -p1 --forward --batch --quiet < "$p" >&2 ||
      die "patch $(basename "$p") does not apply to QEMU $QEMU_VERSION"
  done
  echo "$TREE_KEY" > "$OUT/src/.tree-key"
fi

# Our own files: copy only what changed, so that ninja rebuilds only that.
sync_file() { # src dst
  if ! cmp -s "$1" "$2"; then
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2"
  fi
}
while IFS= read -r -d '' f; do
  sync_file "$HERE/src/$f" "$SRC/$f"
done < <(cd "$HERE/src" && find . -type f -print0)
sync_file "$ROOT/emulator/dsa-model/include/dsa_model.h" "$SRC/hw/dsa/dsa_model.h"

# ---- Rust core --------------------------------------------------------------------------
log "building the dsa-model staticlib"
CARGO_TARGET_DIR="$OUT/cargo-target" cargo build --quiet --release -p dsa-model \
  --manifest-path "$ROOT/Cargo.toml" >&2 || die "cargo build -p dsa-model failed"
LIB="$OUT/cargo-target/release/libdsa_model.a"
[ -f "$LIB" ] || die "$LIB was not produced (is crate-type staticlib set?)"
# Every function the adapter calls must be exported; otherwise the link fails obscurely.
syms=$(nm -g --defined-only "$LIB" 2>/dev/null | awk '{print $3}' | grep '^dsa_model_' | sort -u || true)
for s in dsa_model_new dsa_model_free dsa_model_layout dsa_model_bar0_read dsa_model_bar0_write \
         dsa_model_portal_submit dsa_model_portal_partial dsa_model_set_pci_state \
         dsa_model_reset dsa_model_worker_run dsa_model_stop; do
  grep -qx "$s" <<<"$syms" ||
    die "libdsa_model.a does not export $s: the C ABI of emulator/dsa-model/include/dsa_model.h is not implemented yet"
done
mkdir -p "$OBJ/dsa-model"
if ! cmp -s "$LIB" "$OBJ/dsa-model/libdsa_model.a"; then
  cp "$LIB" "$OBJ/dsa-model/libdsa_model.a"
  # meson does not track archives given as link_args: force the relink.
  rm -f "$OBJ/qemu-system-x86_64"
fi

# ---- configure and build ----------------------------------------------------------------
if [ ! -f "$OBJ/.configured" ]; then
  log "configuring (x86_64-softmmu)"
  find "$OBJ" -mindepth 1 -maxdepth 1 ! -name dsa-model -exec rm -rf {} +
  (cd "$OBJ" && "$SRC/configure" "${CONFIGURE_ARGS[@]}" --python="$VENV/bin/python3") \
    > "$OUT/configure.log" 2>&1 || {
      tail -n 30 "$OUT/configure.log" >&2
      die "configure failed (full log: $OUT/configure.log)"
    }
  touch "$OBJ/.configured"
fi
log "ninja qemu-system-x86_64"
ninja -C "$OBJ" qemu-system-x86_64 >&2 || die "QEMU build failed"

# ---- install into the keyed cache -------------------------------------------------------
mkdir -p "$OUT/bin"
stage=$(mktemp -d "$OUT/bin/.stage.XXXXXX")
chmod 755 "$stage"
cp "$OBJ/qemu-system-x86_64" "$stage/qemu-system-x86_64"
rm -rf "$OUT/bin/$KEY"
mv "$stage" "$OUT/bin/$KEY"
# Only the current binary is kept (running QEMUs keep their unlinked files).
find "$OUT/bin" -mindepth 1 -maxdepth 1 ! -name "$KEY" -exec rm -rf {} +
log "done in $(( $(date +%s) - T0 )) s: $BIN"
printf '%s\n' "$BIN"
