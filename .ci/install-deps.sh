#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine lacks to build and test this project.
# Idempotent: each step checks before it acts. The Debian mirror is taken from the
# machine's own apt configuration; no registry host name is written here.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- bookworm-backports (QEMU 10.0.2 and its source package) -----------------------------
# APT_ETC: the apt configuration directory (tests point it elsewhere).
APT_ETC="${APT_ETC:-/etc/apt}"
# What the machine's apt configuration has for a suite: "deb", "deb-src", both, or nothing.
# Reads deb822 stanzas (*.sources) and one-line entries (sources.list, *.list; options in
# [brackets] allowed).
types_for_suite() {
  local suite="$1"
  {
    for f in "$APT_ETC"/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v want="$suite" '
        BEGIN { RS=""; FS="\n" }
        {
          t=""; suites=""; enabled=1
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^Types:/)   { t = $i; sub(/^Types:[ \t]*/, "", t) }
            if ($i ~ /^Suites:/)  { suites = " " $i " " }
            if ($i ~ /^Enabled:[ \t]*no/) { enabled=0 }
          }
          if (enabled && suites ~ (" " want " ")) { print t }
        }' "$f"
    done
    for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v want="$suite" '$3 == want { print $1 }'
    done
  } | tr ' ' '\n' | awk '/^deb(-src)?$/' | sort -u | tr '\n' ' '
}

# The mirror that serves plain "bookworm" (deb822 first, then one-line entries).
bookworm_mirror() {
  local f
  for f in "$APT_ETC"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      BEGIN { RS=""; FS="\n" }
      {
        u=""; s=""; suites=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)      { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
          if ($i ~ /^Suites:/)    { suites = " " $i " " }
          if ($i ~ /^Signed-By:/) { s = $i; sub(/^Signed-By:[ \t]*/, "", s) }
        }
        if (suites ~ / bookworm / && u != "") { print u, s; exit }
      }' "$f"
  done | head -1
  for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }'
  done | head -1
}

BPO="$APT_ETC"/sources.list.d/project-bookworm-backports.sources
NEED_UPDATE=0
# (A machine without any backports entry is the fresh-machine case: nothing found is not
# an error.)
have=$(types_for_suite bookworm-backports || true)
case " $have " in
  *" deb "*) want_types="" ;;
  *) want_types="deb" ;;
esac
case " $have " in
  *" deb-src "*) ;;
  *) want_types="${want_types:+$want_types }deb-src" ;;
esac
if [ -n "$want_types" ]; then
  read -r uris signed < <(bookworm_mirror | head -1) || true
  [ -n "${uris:-}" ] || { log "cannot find the bookworm mirror in the apt configuration"; exit 1; }
  log "adding bookworm-backports ($want_types) from $uris"
  {
    echo "Types: $want_types"
    echo "URIs: $uris"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    [ -z "${signed:-}" ] || echo "Signed-By: $signed"
  } | $SUDO tee "$BPO" >/dev/null
  NEED_UPDATE=1
fi

want_pkgs=(qemu-system-x86 grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools ovmf
           ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev flex bison python3-venv xz-utils
           patch pkg-config gcc make)
missing=()
for p in "${want_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null; then
  v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
  [ "${v:-0}" -ge 10 ] && qemu_ok=1
fi
if [ ${#missing[@]} -gt 0 ] || [ $qemu_ok -eq 0 ] || [ $NEED_UPDATE -eq 1 ]; then
  log "apt-get update"
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ] || [ $qemu_ok -eq 0 ]; then
  log "installing: ${missing[*]:-qemu-system-x86}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
    qemu-system-x86 "${missing[@]}" >/dev/null
fi

# --- Rust target ---------------------------------------------------------------------------
if ! rustup target list --installed | grep -x x86_64-unknown-none >/dev/null; then
  log "rustup target add x86_64-unknown-none"
  rustup target add x86_64-unknown-none
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep "^$c" >/dev/null || rustup component add "$c"
done
log "done"
