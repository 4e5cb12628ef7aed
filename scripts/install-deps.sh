#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine lacks to build and test this project.
# Idempotent: each step checks before it acts. The Debian mirror is taken from the
# machine's own apt configuration; no registry host name is written here.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- bookworm-backports (QEMU 10.0.2 and its source package) -----------------------------
BPO=/etc/apt/sources.list.d/project-bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uris="" signed=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # deb822: take the stanza that carries the plain "bookworm" suite.
    read -r uris signed < <(awk '
      BEGIN { RS=""; FS="\n" }
      {
        u=""; s=""; suites=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)      { u = $i; sub(/^URIs:[ \t]*/, "", u) }
          if ($i ~ /^Suites:/)    { suites = " " $i " " }
          if ($i ~ /^Signed-By:/) { s = $i; sub(/^Signed-By:[ \t]*/, "", s) }
        }
        if (suites ~ / bookworm / && u != "") { print u, s; exit }
      }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uris" ] && [ -f /etc/apt/sources.list ]; then
    uris=$(awk '$1=="deb" && $3=="bookworm" { print $2; exit }' /etc/apt/sources.list)
  fi
  [ -n "$uris" ] || { log "cannot find the bookworm mirror in the apt configuration"; exit 1; }
  log "adding bookworm-backports from $uris"
  {
    echo "Types: deb deb-src"
    echo "URIs: $uris"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    [ -z "$signed" ] || echo "Signed-By: $signed"
  } | $SUDO tee "$BPO" >/dev/null
  NEED_UPDATE=1
fi

want_pkgs=(qemu-system-x86 grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools ovmf
           ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev flex bison python3-venv xz-utils
           patch pkg-config gcc make)
missing=()
for p in "${want_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null; then
  v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
  [ "${v:-0}" -ge 10 ] && qemu_ok=1
fi
if [ ${#missing[@]} -gt 0 ] || [ $qemu_ok -eq 0 ]; then
  log "apt-get update"
  $SUDO apt-get update -qq
  log "installing: ${missing[*]:-qemu-system-x86}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
    qemu-system-x86 "${missing[@]}" >/dev/null
fi

# --- Rust target ---------------------------------------------------------------------------
if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
  log "rustup target add x86_64-unknown-none"
  rustup target add x86_64-unknown-none
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
log "done"
